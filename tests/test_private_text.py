"""Private language models: DP-SGD on a text, one block of block_size + 1 characters per example.

The blocks (functional_bp.text.text_blocks) are checked to be non-overlapping and to cover the
training text in order; the private text sampler (functional_bp.lm.PoissonBlocks) is checked to
train on exactly those blocks, through the one private epoch of functional_bp.train (its steps
equal PoissonEpochs' on the blocks, bitwise), with the estimate of the non-private text run;
the command line's private text run records epsilon, delta, N and the unit, resumes exactly
after Ctrl-C, and samples. Small generated texts only.
"""

from __future__ import annotations

import contextlib
import io
import json

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from functional_bp import experiment, models
from functional_bp.cli import main
from functional_bp.lm import PoissonBlocks, RandomWindows, nanogpt_optimizer, privacy_unit
from functional_bp.privacy import DPConfig, default_delta, steps_per_epoch
from functional_bp.text import load_text, text_blocks
from functional_bp.train import PoissonEpochs, fit, init_state, load_state
from helpers import CtrlCAfter

pytest.importorskip("optax")
pytest.importorskip("dp_accounting")

LOSS = "softmax_cross_entropy"
T = 8  # block_size of the Python tests: blocks of 9 tokens


def _tokens(n, vocab=7, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


def _net(vocab=7, block=T, dropout=0.0):
    return models.gpt(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=8,
                      dropout=dropout, bias=False)


# ------------------------------------------------------------------------------- the blocks
@given(n=st.integers(2, 400), block=st.integers(1, 40))
def test_blocks_are_non_overlapping_cover_the_text_in_order_and_drop_the_remainder(n, block):
    tokens = np.arange(n, dtype=np.uint32)   # token i at position i: a block says where it is
    if n < block + 1:
        with pytest.raises(ValueError, match="block_size"):
            text_blocks(tokens, block)
        return
    x, y = text_blocks(tokens, block)
    N = n // (block + 1)
    assert x.shape == y.shape == (N, block) and x.dtype == y.dtype == np.int32
    whole = np.concatenate([x, y[:, -1:]], axis=1)          # each block's block + 1 tokens
    np.testing.assert_array_equal(y, whole[:, 1:])            # y is x shifted by one
    np.testing.assert_array_equal(whole.ravel(), tokens[: N * (block + 1)])  # in order, no gap
    assert len(np.unique(whole)) == whole.size                # no token in two blocks
    assert n - N * (block + 1) == n % (block + 1) < block + 1  # only the remainder dropped
    unit = privacy_unit(n, block)
    assert (unit["num_blocks"], unit["block_tokens"], unit["dropped_tokens"]) == (
        N, block + 1, n % (block + 1))


def test_the_privacy_unit_counts_blocks_not_the_overlapping_windows_of_the_text():
    # tiny Shakespeare's training split: 1,003,854 characters, block 64
    unit = privacy_unit(1_003_854, 64, what="characters")
    windows = 1_003_854 - 64          # nanoGPT's possible window starts
    assert unit["num_blocks"] == 15443 != windows
    assert unit["protects"].startswith("one block of 65 consecutive characters")
    assert "group privacy" in unit["protects"] and "last 59 characters unused" in unit["protects"]


# ------------------------------------------------------------------------------ through fit
def _fit_private(tokens, val, sampler, epochs, dp, seed=0):
    net = _net()
    opt = nanogpt_optimizer(warmup_iters=1, lr_decay_iters=20)
    state = init_state(net.init(jax.random.key(seed), (T,)), optimizer=opt,
                       key=jax.random.key(seed + 1))
    return fit(state, tokens, val=val, network=net, loss=LOSS, optimizer=opt, epochs=epochs,
               dp=dp, sampler=sampler), net, opt


def test_the_private_examples_are_the_blocks_and_the_steps_are_poisson_epochs_on_them():
    tokens, val = _tokens(905), _tokens(100, seed=1)   # 905 = 100 blocks of 9, 5 left over
    dp = DPConfig(clip_norm=0.5, noise_multiplier=1.3)
    sampler = PoissonBlocks(batch_size=10, block_size=T, eval_iters=2)
    (state, history), net, opt = _fit_private(tokens, val, sampler, 2, dp)
    x, y = text_blocks(tokens, T)
    # the sampler's examples are the 100 blocks; overlapping windows (897 of 9 tokens here)
    # as examples, or N counted from them, fail here and in the accountant's q below
    assert sampler.data.x.shape[0] == state.dp.num_examples == 100
    np.testing.assert_array_equal(np.asarray(sampler.data.x), x)
    assert state.dp.delta == default_delta(100) and state.dp.sampling_probability == 10 / 100
    # the same steps as fit's own private epochs on the blocks as examples, bitwise
    ref_state = init_state(net.init(jax.random.key(0), (T,)), optimizer=opt,
                           key=jax.random.key(1))
    ref, _ = fit(ref_state, (x, y), network=net, loss=LOSS, optimizer=opt, epochs=2, dp=dp,
                 sampler=PoissonEpochs(10))
    assert ref.dp == state.dp and ref.epoch == state.epoch == 2
    for a, b in zip(jax.tree_util.tree_leaves(ref.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # every record: the epoch, its iteration and the accountant's epsilon after its steps
    spe = steps_per_epoch(100, 10)
    assert [(r["epoch"], r["iter"]) for r in history] == [(0, 0), (1, spe), (2, 2 * spe)]
    for r in history:
        assert r["epsilon"] == pytest.approx(state.dp.epsilon(r["epoch"] * spe), rel=1e-12)
    assert history[-1]["epsilon"] > history[1]["epsilon"] > 0


def test_the_private_run_is_evaluated_by_the_estimate_of_the_non_private_one():
    tokens, val = _tokens(905), _tokens(100, seed=1)
    (_, private), _, _ = _fit_private(tokens, val, PoissonBlocks(batch_size=10, block_size=T,
                                                                 eval_iters=3), 0,
                                      DPConfig(clip_norm=1.0, noise_multiplier=1.0))
    net = _net()
    opt = nanogpt_optimizer(warmup_iters=1, lr_decay_iters=20)
    state = init_state(net.init(jax.random.key(0), (T,)), optimizer=opt, key=jax.random.key(1))
    _, plain = fit(state, tokens, val=val, network=net, loss=LOSS, optimizer=opt, epochs=0,
                   sampler=RandomWindows(batch_size=10, block_size=T, max_iters=20,
                                         eval_iters=3))
    assert len(private) == len(plain) == 1
    assert private[0]["train_loss"] == plain[0]["train_loss"]
    assert private[0]["val_loss"] == plain[0]["val_loss"]


def test_the_private_text_sampler_refuses_what_it_cannot_train():
    tokens, val = _tokens(905), _tokens(100, seed=1)
    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.0)
    sampler = PoissonBlocks(batch_size=10, block_size=T, eval_iters=2)
    with pytest.raises(ValueError, match="dp=DPConfig"):   # a private sampler needs dp=
        _fit_private(tokens, val, sampler, 1, None)
    with pytest.raises(ValueError, match="epochs must be"):
        _fit_private(tokens, val, sampler, None, dp)
    net = _net(dropout=0.1)
    opt = nanogpt_optimizer(warmup_iters=1, lr_decay_iters=20)
    state = init_state(net.init(jax.random.key(0), (T,)), optimizer=opt, key=jax.random.key(1))
    with pytest.raises(ValueError, match="Dropout"):
        fit(state, tokens, val=val, network=net, loss=LOSS, optimizer=opt, epochs=1, dp=dp,
            sampler=sampler)
    with pytest.raises(ValueError, match="block_size"):
        _fit_private(tokens[:5], val, sampler, 1, dp)


# --------------------------------------------------------------------------- the command line
MODEL = "gpt n_layer=1 n_head=2 n_embd=8 block_size=16 bias=False"
RUN = ["--model", MODEL, "--batch-size", "16", "--max-iters", "30", "--warmup-iters", "2",
       "--eval-interval", "10", "--eval-iters", "2", "--dp-clip", "1", "--dp-epsilon", "8",
       "--quiet"]


def _text(folder, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the cat", "a dog", "sat on", "the mat", "ran far", "big hat"]
    path = folder / "tiny.txt"
    path.write_text(" ".join(rng.choice(words, n // 6)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("private_text")
    path = _text(folder)
    out = folder / "full"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["train", "--data", f"text:{path}", *RUN, "--out", str(out)])
    return code, path, out, (stdout.getvalue(), stderr.getvalue())


def test_a_private_text_run_from_the_command_line_records_its_guarantee_and_samples(
        full_run, capsys):
    code, path, out, _ = full_run
    assert code == 0
    corpus = load_text(path)
    N = len(corpus.train) // 17
    metrics = json.loads((out / "metrics.json").read_text())
    plan = metrics["dp"]["plan"]
    assert plan["num_examples"] == N and plan["batch_size"] == 16
    assert plan["delta"] == default_delta(N) and plan["delta_is_default"]
    assert plan["target_epsilon"] == 8.0
    spe = steps_per_epoch(N, 16)
    # --max-iters 30 is rounded up to whole epochs; the cosine decay follows
    epochs = -(-30 // spe)
    assert metrics["config"]["max_iters"] == metrics["config"]["lr_decay_iters"] == epochs * spe
    assert metrics["iter"] == epochs * spe and metrics["config"]["epochs"] == epochs
    assert metrics["dp"]["steps"] == plan["steps"] == epochs * spe
    assert metrics["dp"]["epsilon"] == pytest.approx(8.0, rel=1e-4)
    assert metrics["dp"]["epsilon"] <= 8.0 * (1 + 1e-6)
    assert metrics["privacy_unit"] == privacy_unit(len(corpus.train), 16, what="characters")
    assert metrics["privacy_unit"]["num_blocks"] == N
    assert [e["iter"] for e in metrics["evals"]] == [e["epoch"] * spe for e in metrics["evals"]]
    assert metrics["evals"][-1]["epsilon"] == metrics["dp"]["epsilon"]
    assert metrics["val_loss"] == metrics["evals"][-1]["val_loss"]
    assert metrics["status"] == "finished"
    state, meta = load_state(out / "params.npz", optimizer=nanogpt_optimizer(
        warmup_iters=2, lr_decay_iters=epochs * spe))
    assert state.epoch == epochs and state.dp.num_examples == N and meta["vocab"] == corpus.vocab
    capsys.readouterr()
    assert main(["sample", "--from", str(out), "--prompt", "the ", "--tokens", "20"]) == 0
    sample = capsys.readouterr().out
    assert sample.startswith("the ") and len(sample) == len("the ") + 20 + 1
    assert set(sample) <= set(corpus.vocab) | {"\n"}


def test_the_summary_line_says_what_epsilon_protects(full_run):
    code, path, _, (out, err) = full_run
    assert code == 0
    corpus = load_text(path)
    N = len(corpus.train) // 17
    spe = steps_per_epoch(N, 16)
    epochs = -(-30 // spe)
    assert f"--max-iters 30: a private run trains whole epochs of round(N / batch size) = " \
           f"{spe} steps (N = {N} blocks of 17 characters): rounded up to {epochs} epochs = " \
           f"{epochs * spe} iterations" in err
    assert f"{epochs * spe} iterations, {epochs} epochs (finished)" in out
    assert f"delta {default_delta(N):g} (the default: below 1/N = 1/{N})" in out
    assert "epsilon 8 for one block of 17 consecutive characters (the training text cut into " \
           f"{N} non-overlapping blocks; its last {len(corpus.train) % 17} characters unused); " \
           "a longer text of one person only by group privacy" in out


def test_an_interrupted_private_text_run_resumes_exactly_and_goes_on_accounting(
        full_run, tmp_path, monkeypatch, capsys):
    code, path, full, _ = full_run
    assert code == 0
    monkeypatch.setattr(experiment, "Interrupt", CtrlCAfter(2))  # after epoch 1
    assert main(["train", "--data", f"text:{path}", *RUN, "--out", str(tmp_path / "half")]) \
        == 130
    assert "resume with: functional-bp train --resume" in capsys.readouterr().err
    half = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert half["status"] == "interrupted" and half["config"]["epochs"] == 1
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "half" / "params.npz"), "--quiet",
                 "--out", str(tmp_path / "rest")]) == 0
    full_m = json.loads((full / "metrics.json").read_text())
    rest_m = json.loads((tmp_path / "rest" / "metrics.json").read_text())
    assert rest_m["evals"] == full_m["evals"] and rest_m["dp"] == full_m["dp"]
    opt = nanogpt_optimizer(warmup_iters=2, lr_decay_iters=full_m["config"]["lr_decay_iters"])
    a, _ = load_state(full / "params.npz", optimizer=opt)
    b, _ = load_state(tmp_path / "rest" / "params.npz", optimizer=opt)
    assert a.epoch == b.epoch and a.dp == b.dp
    for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("extra, option, words", [
    (["--model", MODEL.replace("bias=False", "dropout=0.1"), "--dp-clip", "1", "--dp-noise",
      "1"], "--dp-clip", ["Dropout", "dropout=0"]),
    (["--model", MODEL, "--dp-noise", "1"], "--dp-noise", ["--dp-clip"]),
    (["--model", MODEL, "--dp-clip", "1"], "--dp-clip", ["--dp-noise", "--dp-epsilon"]),
    (["--model", MODEL, "--dp-clip", "1", "--dp-noise", "1", "--dp-delta", "0.5"],
     "--dp-delta", ["1/N"]),
])
def test_private_text_usage_errors_name_the_option(tmp_path, capsys, extra, option, words):
    path = _text(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", f"text:{path}", "--max-iters", "4", "--warmup-iters", "1",
              "--quiet", "--out", str(tmp_path / "x"), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and all(w in err for w in words), err


def test_the_sort_task_refuses_private_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "sort", "--model", "gpt n_layer=1 n_head=2 n_embd=8",
              "--dp-clip", "1", "--dp-noise", "1", "--out", str(tmp_path / "x"), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --dp-clip" in err and "text:PATH" in err


# ------------------------------------------------------------------- the benchmark's table
def test_the_lm_table_gives_both_sides_the_same_whole_epochs_and_fills_the_readme(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import dp_lm_table

    n, spe, steps = dp_lm_table.schedule(1_003_854, 128, 1)   # tiny Shakespeare's training split
    assert (n, spe, steps) == (15443, 121, 121)
    plain = dp_lm_table.command("t.txt", 0, None, batch=128, steps=steps, eval_iters=20)
    private = dp_lm_table.command("t.txt", 0, 3.0, batch=128, steps=steps, eval_iters=20)
    assert private[: len(plain)] == plain      # the same run, plus the --dp options
    assert private[len(plain):] == ["--dp-clip", "1", "--dp-epsilon", "3"]
    i = plain.index("--max-iters")
    assert plain[i + 1] == str(steps) and steps % spe == 0   # no rounding: the same steps
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- dp-lm:begin -->\nold\n<!-- dp-lm:end -->\nb\n")
    rows = [dict(eps=None, losses=[2.0, 2.5]), dict(eps=3.0, losses=[3.0, 3.5])]
    dp_lm_table.fill_readme(readme, dp_lm_table.readme_table(rows, 2))
    text = readme.read_text()
    assert "old" not in text and text.startswith("a\n") and text.endswith("\nb\n")
    assert "| non-private | 2.0000, 2.5000 | 2.2500 |" in text
    assert "| DP-SGD, ε = 3 | 3.0000, 3.5000 | 3.2500 |" in text
    with pytest.raises(SystemExit, match="dp-lm"):
        dp_lm_table.fill_readme(tmp_path / "none.md", None)
