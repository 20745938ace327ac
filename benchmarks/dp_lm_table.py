"""Validation loss of a private character GPT (DP-SGD) at epsilon 3 and 8, next to non-private.

``python benchmarks/dp_table.py --lm --data TEXT`` runs this script. The model
is nanoGPT's CPU run's (4 layers, 4 heads, 128 wide, block 64, no biases,
dropout 0: ``--model "gpt n_layer=4 n_head=4 n_embd=128 block_size=64
bias=False"``) on a text (tiny Shakespeare: char-rnn's
``data/tinyshakespeare/input.txt``, 1,115,394 characters), with nanoGPT's
AdamW and schedule. Every run is one ``functional-bp train --data text:PATH``
command, run in this process (``functional_bp.cli.main``) so that the seeds of
a setting share their compiled programs:

- private (epsilon 3 and 8): ``--dp-clip 1 --dp-epsilon EPS``. The examples
  are the N = n_train // 65 non-overlapping blocks of 65 characters of the
  training split (15,443 for tiny Shakespeare, its last 59 characters
  unused); each step samples every block with probability q = B / N
  (Poisson), clips each block's gradient to norm 1 and adds the noise, whose
  multiplier sigma is calibrated so that the RDP accountant's epsilon after
  the run's steps is EPS, at the default delta (the largest power of ten
  <= 1/(10 N): 1e-6). Epsilon protects one block of 65 consecutive
  characters (docs/private-training.md, "Private language models").
- non-private: the same command without the --dp options (nanoGPT's random
  windows, batch B), the same number of steps.

Both: batch B (``--batch-size``, the expected batch of the private runs),
``--max-iters`` = ``--lr-decay-iters`` = S, the steps of ``--epochs`` whole
private epochs (round(N / B) steps each), ``--warmup-iters`` S / 20 (nanoGPT's
share, 100 of 2,000), learning rate 1e-3 to 1e-4 (nanoGPT's), evaluations at
the start and the end only (``--eval-interval`` S), each the mean loss of
``--eval-iters`` batches of B random windows of each split: the same estimator
for every row. Seeds 0, 1, 2; a 200-character sample of each setting's seed-0
model (``functional-bp sample --from RUN/params.npz --seed 0``).

The batch and length (B = 128, one epoch: S = 121 steps on tiny Shakespeare)
are set by the time the table may take: at most about 20 minutes on this
2-core machine for its 9 runs when it is quiet. A private run's cost is that
of its epochs, about N blocks each, whatever B: each step processes a
compiled chunk of ``capacity`` rows (185 for B = 128, N = 15,443: 1.45 B,
so that a second chunk is needed with probability at most 1e-6), so one
private epoch costs about the gradients of 1.45 N blocks, plus a compilation
and two evaluations. One step's time at B = 128, measured by
``python benchmarks/dp_table.py --lm --data tinyshakespeare.txt --time-steps 3``
(one run, 2026-12-04 23:54 UTC, the 2 cores shared with other jobs, load
average 4.8 at the start and 5.1 at the end, so an upper bound): a private
step 1.91 s, a non-private step of the same batch 1.17 s (after a compiling
call; one evaluation of one batch per split included). At that load the
table would take about 6 x (121 x 1.91 s + 30 s) + 3 x (121 x 1.17 s + 20 s)
~ 34 minutes; the process had about 0.7 of the 2 cores (40 s of CPU time,
user and system, in 56 s of wall time, compilation included), so on a quiet
machine about 2-3x less: ~ 12-17 minutes (an estimate, not a measurement). DP needs a
batch far larger than nanoGPT's 12 (the noise on the mean gradient is
sigma C / B, sigma ~ 0.6-0.8 here): B = 128 keeps 121 steps in the budget
(B = 256 would leave 60 steps; B = 64 doubles the noise on each step at the
same cost per epoch). Two epochs (``--epochs 2``, 242 steps) double the time.
The clip norm 1: at initialisation the blocks' gradient norms are 5.2 to 7.0
(``functional_bp.per_example_grad_norms`` on 64 random blocks of tiny
Shakespeare, seed 0; quartiles 5.7, 6.0, 6.2), so every block is clipped;
with every example clipped the ratio of the clipped sum to the noise does not
depend on C, and AdamW does not depend on the gradient's scale. The settings
are not tuned per epsilon.

The table goes into ``benchmarks/RESULTS.md`` as its own block
(``report.write_block``), with the commands and the samples; ``--readme
README.md`` also fills the README's table between ``<!-- dp-lm:begin -->``
and ``<!-- dp-lm:end -->``.

Run::

    python benchmarks/dp_table.py --lm --data tinyshakespeare.txt --readme README.md
    python benchmarks/dp_table.py --lm --data tinyshakespeare.txt --time-steps 3
    python benchmarks/dp_table.py --lm --data tiny.txt --batch-size 16 --eval-iters 2 \\
        --out /tmp/r.md                                   # a smoke run on a small text
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import report  # noqa: E402
from functional_bp.cli import main as cli_main  # noqa: E402
from functional_bp.lm import privacy_unit  # noqa: E402
from functional_bp.privacy import steps_per_epoch  # noqa: E402
from functional_bp.text import load_text  # noqa: E402

MODEL = "gpt n_layer=4 n_head=4 n_embd=128 block_size=64 bias=False"
"""nanoGPT's CPU run's model (its README, 'for a macbook'), dropout 0."""
BLOCK = 64
EPSILONS = (3.0, 8.0)
SEEDS = (0, 1, 2)
BATCH, EPOCHS, EVAL_ITERS, SAMPLE_CHARS, CLIP = 128, 1, 20, 200, 1.0
README_BEGIN, README_END = "<!-- dp-lm:begin -->", "<!-- dp-lm:end -->"


def schedule(n_train, batch, epochs):
    """``(N, steps per epoch, S)``: the blocks, a private epoch's steps, the run's steps."""
    n = privacy_unit(n_train, BLOCK)["num_blocks"]
    spe = steps_per_epoch(n, min(batch, n))
    return n, spe, epochs * spe


def command(path, seed, eps, *, batch, steps, eval_iters):
    """The ``functional-bp`` arguments of one table cell (``eps`` None: non-private)."""
    argv = ["train", "--data", f"text:{path}", "--model", MODEL, "--batch-size", str(batch),
            "--max-iters", str(steps), "--lr-decay-iters", str(steps),
            "--warmup-iters", str(max(1, round(steps / 20))), "--eval-interval", str(steps),
            "--eval-iters", str(eval_iters), "--seed", str(seed)]
    if eps is not None:
        argv += ["--dp-clip", f"{CLIP:g}", "--dp-epsilon", f"{eps:g}"]
    return argv


def run(argv, out):
    """One CLI run into ``out``; its metrics.json."""
    code = cli_main([*argv, "--quiet", "--out", out])
    if code != 0:
        raise SystemExit(f"functional-bp {shlex.join(argv)} exited with {code}")
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def sample(out, chars):
    """``chars`` characters of the run's final model, seed 0, after a newline."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli_main(["sample", "--from", os.path.join(out, "params.npz"), "--tokens",
                         str(chars), "--seed", "0"])
    if code != 0:
        raise SystemExit(f"functional-bp sample --from {out} exited with {code}")
    return buf.getvalue()


def time_steps(path, batch, k):
    """One private and one non-private step's time at ``batch`` (``k`` timed steps each).

    On the text's first 4 B blocks (a private epoch of round(4 B / B) = 4
    steps; a step's cost does not depend on N but through the chunk's
    capacity, close to the full text's): a compiling call, then ``k`` steps,
    each side timed as one call of ``fit`` (the steps and one evaluation of
    one batch per split).
    """
    import jax

    from functional_bp import models
    from functional_bp.lm import PoissonBlocks, RandomWindows, nanogpt_optimizer
    from functional_bp.privacy import DPConfig
    from functional_bp.train import fit, init_state

    corpus = load_text(path)
    train = corpus.train[: 4 * batch * (BLOCK + 1)]
    net = models.gpt(vocab_size=corpus.vocab_size, block_size=BLOCK, bias=False)
    opt = nanogpt_optimizer(warmup_iters=1, lr_decay_iters=100)
    dp = DPConfig(clip_norm=CLIP, noise_multiplier=1.0)
    out = {}
    for name in ("private", "non-private"):
        state = init_state(net.init(jax.random.key(0), (BLOCK,)), optimizer=opt,
                           key=jax.random.key(1))
        times = []
        for _ in range(2):
            if name == "private":
                sampler = PoissonBlocks(batch_size=batch, block_size=BLOCK, eval_iters=1)
                kw = dict(epochs=1, dp=dp)
            else:
                sampler = RandomWindows(batch_size=batch, block_size=BLOCK, max_iters=10 ** 6,
                                        eval_interval=k, eval_iters=1)
                kw = dict(epochs=k)
            t0 = time.perf_counter()
            state, hist = fit(state, train, val=corpus.val, network=net,
                              loss="softmax_cross_entropy", optimizer=opt, sampler=sampler, **kw)
            jax.block_until_ready(state.params)
            steps = 4 if name == "private" else k
            times.append((time.perf_counter() - t0) / steps)
        out[name] = times
        print(f"{name} step at batch {batch}: compiling call {times[0]:.3f} s/step, then "
              f"{times[1]:.3f} s/step", flush=True)
    return out


def cell(values):
    return f"{statistics.mean(values):.4f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the text (tiny Shakespeare's input.txt)")
    ap.add_argument("--seeds", type=int, default=len(SEEDS))
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="private epochs per run")
    ap.add_argument("--eval-iters", type=int, default=EVAL_ITERS)
    ap.add_argument("--sample-chars", type=int, default=SAMPLE_CHARS)
    ap.add_argument("--time-steps", type=int, default=0, metavar="K",
                    help="only time K private and K non-private steps at --batch-size")
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--readme", default=None, help="also fill this README's table")
    a = ap.parse_args(argv)
    if a.time_steps:
        time_steps(a.data, a.batch_size, a.time_steps)
        print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        return 0
    if a.readme is not None:
        fill_readme(Path(a.readme), None)  # checks the block is there, before any run
    path = os.path.abspath(a.data)
    n_train = len(load_text(path).train)
    n, spe, steps = schedule(n_train, a.batch_size, a.epochs)
    label = a.label or f"DP language model: {report.default_label()}"
    machine = report.machine()
    started = time.perf_counter()
    rows, samples = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for eps in (None, *EPSILONS):
            t0 = time.perf_counter()
            results = []
            for seed in range(a.seeds):
                out = os.path.join(folder, f"eps{eps}-seed{seed}")
                results.append(run(command(path, seed, eps, batch=a.batch_size, steps=steps,
                                           eval_iters=a.eval_iters), out))
                if seed == 0:
                    samples[eps] = sample(out, a.sample_chars)
            seconds = time.perf_counter() - t0
            dp = results[0]["dp"]
            rows.append(dict(
                eps=eps, losses=[m["val_loss"] for m in results],
                spent=None if dp is None else max(m["dp"]["epsilon"] for m in results),
                sigma=None if dp is None else dp["plan"]["noise_multiplier"],
                delta=None if dp is None else dp["plan"]["delta"],
                steps=results[0]["iter"], seconds=seconds,
                train_seconds=[m["train_seconds"] for m in results]))
            print(f"epsilon {eps}: val loss {', '.join(f'{v:.4f}' for v in rows[-1]['losses'])}"
                  f" ({seconds:.1f} s)", flush=True)
    elapsed = time.perf_counter() - started
    machine.append(("load average at end", " ".join(f"{v:.2f}" for v in os.getloadavg())))

    seeds = ", ".join(str(s) for s in range(a.seeds))
    cmd = "python " + shlex.join(["benchmarks/dp_table.py", "--lm"]
                                 + [x for x in (sys.argv[1:] if argv is None else argv)
                                    if x != "--lm"])
    unit = privacy_unit(n_train, BLOCK, what="characters")
    out = [f"## {label}", "", f"Command: `{cmd}` ({report.now()}, {elapsed:.0f} s in all)", ""]
    out += [f"- {k}: {v}" for k, v in machine]
    out += ["", f"Validation loss of nanoGPT's CPU model (`--model \"{MODEL}\"`, dropout 0) "
            f"on `{os.path.basename(path)}`, batch {a.batch_size}, {steps} steps "
            f"({a.epochs} private epoch{'s' if a.epochs != 1 else ''} of round(N / B) = {spe} "
            f"steps), seeds {seeds}. Each row is these commands, one per seed:", ""]
    for eps in (None, 3.0):
        out.append("    functional-bp " + shlex.join(command(
            os.path.basename(path), 0, eps, batch=a.batch_size, steps=steps,
            eval_iters=a.eval_iters)) + ("  # and --dp-epsilon 8" if eps else ""))
    out += ["", f"The private runs' unit: {unit['protects']} (N = {n}).", "",
            "| training | ε target | δ | σ (calibrated) | steps | ε spent | "
            + " | ".join(f"val loss, seed {s}" for s in range(a.seeds))
            + " | mean | seconds (all seeds) |",
            "|---|---:|---:|---:|---:|---:|" + "---:|" * a.seeds + "---:|---:|"]
    for r in rows:
        losses = " | ".join(f"{v:.4f}" for v in r["losses"])
        if r["eps"] is None:
            out.append(f"| non-private | – | – | – | {r['steps']} | – | {losses} | "
                       f"{cell(r['losses'])} | {r['seconds']:.0f} |")
        else:
            out.append(f"| DP-SGD, clip {CLIP:g} | {r['eps']:g} | {r['delta']:g} | "
                       f"{r['sigma']:.3f} | {r['steps']} | {r['spent']:.3f} | {losses} | "
                       f"{cell(r['losses'])} | {r['seconds']:.0f} |")
    out += ["", "The validation loss is the last evaluation's, the mean over "
            f"{a.eval_iters} batches of {a.batch_size} random windows of the validation "
            "split (nanoGPT's estimate, the same for every row). ε spent is the RDP "
            "accountant's after the last step (at most the target: σ is calibrated to it). "
            "The seconds include compiling, once per row, and evaluating.", ""]
    for eps in (None, *EPSILONS):
        name = "non-private" if eps is None else f"ε = {eps:g}"
        out += [f"Sample ({name}, seed 0, {a.sample_chars} characters, "
                "`functional-bp sample --from RUN/params.npz --seed 0`):", "", "```text",
                samples[eps].rstrip("\n"), "```", ""]
    body = "\n".join(out) + "\n"
    report.write_block(Path(a.out), label, body)
    print(body)
    print(f"wrote {a.out}")
    readme = readme_table(rows, a.seeds)
    print(readme)
    if a.readme is not None:
        fill_readme(Path(a.readme), readme)
        print(f"filled the table of {a.readme}")
    return 0


def readme_table(rows, n_seeds):
    """The README's table: one row per setting, validation loss per seed and mean."""
    lines = [f"| training (same steps) | val loss, seeds {', '.join(map(str, range(n_seeds)))}"
             " | mean |", "|---|---|---|"]
    for r in rows:
        name = "non-private" if r["eps"] is None else f"DP-SGD, ε = {r['eps']:g}"
        lines.append(f"| {name} | {', '.join(f'{v:.4f}' for v in r['losses'])} | "
                     f"{cell(r['losses'])} |")
    return "\n".join(lines)


def fill_readme(path, table):
    """Replace what lies between the README's dp-lm markers with ``table`` (None: check only)."""
    text = path.read_text() if path.is_file() else ""
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"--readme {path}: no {README_BEGIN} ... {README_END} block to fill")
    if table is None:
        return
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    path.write_text(f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}")


if __name__ == "__main__":
    raise SystemExit(main())
