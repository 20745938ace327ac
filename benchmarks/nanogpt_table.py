"""nanoGPT's CPU run on tiny Shakespeare, nanoGPT's own train.py beside ours, seed by seed.

nanoGPT's README gives a run "for a macbook" (about 3 minutes, a validation
loss of about 1.88)::

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False \\
        --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 \\
        --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

and ours is meant to be exactly::

    functional-bp train --data text:input.txt \\
        --model "gpt n_layer=4 n_head=4 n_embd=128 block_size=64 bias=False" \\
        --batch-size 12 --max-iters 2000 --lr-decay-iters 2000 --eval-iters 20 --out DIR

This script runs both on the same text, one seed after the other, alternating
the two sides so that they see the same load, and writes a block of RESULTS.md:
each side's validation curve, final losses and training time per seed, the
load average during each run, and a 500-character sample of each model.

nanoGPT's side runs nanoGPT's own files, unmodified, in a Python environment
of their own (PyTorch is never a dependency of this library), from a folder
given with ``--nanogpt`` holding nanoGPT's ``model.py``, ``train.py``,
``configurator.py``, ``config/train_shakespeare_char.py`` and
``data/shakespeare_char/prepare.py`` (a copy of the karpathy/nanoGPT
repository; nothing of it is kept in this one). Set that environment up once::

    python3 -m venv ~/bench-venv && ~/bench-venv/bin/pip install torch==2.13.0 numpy

and run::

    python benchmarks/nanogpt_table.py --nanogpt ~/nanoGPT --data input.txt \\
        --torch-python ~/bench-venv/bin/python

The text is char-rnn's tiny Shakespeare (``data/tinyshakespeare/input.txt``
of the karpathy/char-rnn repository, 1,115,394 characters). In a scratch
folder (``--work``), the script copies nanoGPT's files, puts the text at
``data/shakespeare_char/input.txt`` and runs nanoGPT's own ``prepare.py`` on it
(its download is never reached: the text is there), then checks that our
``load_dataset("text:PATH")`` gives the very same tokens as its ``train.bin``
and ``val.bin``.

Seeds: nanoGPT seeds PyTorch with ``torch.manual_seed(1337)``; its seed S
here is 1337 + S, set by wrapping ``torch.manual_seed`` before ``train.py``
runs (seed 0 is nanoGPT's own run). Time: nanoGPT prints each iteration's
wall time (``iter N: loss X, time Tms``, the time from the end of one
iteration to the end of the next, evaluations included); their sum is the
wall time of its training loop, the number set beside our ``train_seconds``.
nanoGPT's loop runs iterations 0 .. max_iters, max_iters + 1 optimizer steps;
its last evaluation is at step max_iters, before the last step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402

NANOGPT_FILES = ("model.py", "train.py", "configurator.py", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py")
"""What --nanogpt must hold (the karpathy/nanoGPT repository's paths)."""

NANOGPT_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
                 "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                 "--n_embd=128", "--dropout=0.0"]
"""nanoGPT README's CPU run, but for --max_iters and --lr_decay_iters (set from --max-iters)."""

OUR_MODEL = "gpt n_layer=4 n_head=4 n_embd=128 block_size=64 bias=False"
TARGET_VAL_LOSS = 1.89
TARGET_GAP = 0.02
SAMPLE_CHARS = 500

# Runs nanoGPT's train.py with torch.manual_seed(s) -> torch.manual_seed(s + SEED).
_SEEDED_TRAIN = """\
import runpy, sys, torch
seed = int(sys.argv.pop(1))
_manual_seed = torch.manual_seed
torch.manual_seed = lambda s: _manual_seed(s + seed)
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""

# nanoGPT's sample.py, reduced to what a 500-character sample needs (its defaults:
# start "\\n", temperature 0.8, top_k 200), from the best checkpoint train.py kept.
_SAMPLE = """\
import contextlib, pickle, sys, torch
from model import GPT, GPTConfig
out_dir, tokens, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(1337 + seed)
ckpt = torch.load(f"{out_dir}/ckpt.pt", map_location="cpu")
with contextlib.redirect_stdout(sys.stderr):  # GPT() prints its parameter count
    model = GPT(GPTConfig(**ckpt["model_args"]))
model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
model.eval()
meta = pickle.load(open("data/shakespeare_char/meta.pkl", "rb"))
x = torch.tensor([[meta["stoi"]["\\n"]]], dtype=torch.long)
with torch.no_grad():
    y = model.generate(x, tokens, temperature=0.8, top_k=200)
sys.stdout.write("".join(meta["itos"][i] for i in y[0].tolist()[1:]))
"""

_STEP = re.compile(r"^step (\d+): train loss ([0-9.]+), val loss ([0-9.]+)\s*$")
_ITER = re.compile(r"^iter (\d+): loss ([0-9.]+), time ([0-9.]+)ms")


def parse_nanogpt_log(text: str) -> dict:
    """nanoGPT's printed evaluations and iteration times.

    Returns ``{"evals": [{"iter", "train_loss", "val_loss"}], "iter_ms": [...],
    "train_seconds": sum of the iteration times}``; a log without evaluations
    raises a ValueError showing its last lines.

    Example::

        >>> log = "step 0: train loss 4.2874, val loss 4.2823\\niter 0: loss 4.2, time 812.50ms, mfu -100.00%\\n"
        >>> parse_nanogpt_log(log)["evals"], parse_nanogpt_log(log)["train_seconds"]
        ([{'iter': 0, 'train_loss': 4.2874, 'val_loss': 4.2823}], 0.8125)
    """
    evals, iter_ms = [], []
    for line in text.splitlines():
        if m := _STEP.match(line):
            evals.append({"iter": int(m[1]), "train_loss": float(m[2]), "val_loss": float(m[3])})
        elif m := _ITER.match(line):
            iter_ms.append(float(m[3]))
    if not evals:
        tail = "\n".join(text.splitlines()[-15:])
        raise ValueError(f"no 'step N: train loss X, val loss Y' line in nanoGPT's output:\n{tail}")
    return {"evals": evals, "iter_ms": iter_ms, "train_seconds": sum(iter_ms) / 1e3}


class LoadMeter:
    """The 1-minute load average, sampled every few seconds while a run lasts."""

    def __init__(self, every=5.0):
        self.every, self.samples, self._stop = every, [os.getloadavg()[0]], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        return {"load_mean": statistics.mean(self.samples), "load_max": max(self.samples)}


def _stream(cmd, cwd, log_path, echo):
    """Run ``cmd``, writing its output to ``log_path``; echo the lines ``echo`` selects."""
    lines = []
    with open(log_path, "w") as log, subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1) as proc:
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            if echo(line):
                print("   ", line.rstrip(), flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed (exit {proc.returncode}); "
                           f"its output is in {log_path}:\n" + "".join(lines[-20:]))
    return "".join(lines)


# ----------------------------------------------------------- nanoGPT's side

def prepare_nanogpt(nanogpt: Path, data: Path, work: Path, python: str) -> Path:
    """A scratch copy of nanoGPT's files, with the text prepared by its own prepare.py."""
    missing = [f for f in NANOGPT_FILES if not (nanogpt / f).is_file()]
    if missing:
        raise SystemExit(f"--nanogpt {nanogpt}: missing {missing}; give a copy of the "
                         "karpathy/nanoGPT repository")
    root = work / "nanogpt"
    for f in NANOGPT_FILES:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nanogpt / f, root / f)
    shutil.copyfile(data, root / "data/shakespeare_char/input.txt")
    # prepare.py imports requests for its download, which is skipped when input.txt exists.
    code = ("import runpy, sys, types; sys.modules.setdefault('requests', "
            "types.ModuleType('requests')); runpy.run_path("
            "'data/shakespeare_char/prepare.py', run_name='__main__')")
    _stream([python, "-c", code], root, work / "prepare.log", lambda line: "vocab" in line)
    return root


def check_same_tokens(root: Path, data: Path) -> str:
    """Our load_dataset("text:PATH") against nanoGPT's train.bin and val.bin, token by token."""
    import numpy as np

    from functional_bp.datasets import load_dataset

    corpus = load_dataset(f"text:{data}")
    d = root / "data/shakespeare_char"
    for name, ours in (("train", corpus.train), ("val", corpus.val)):
        theirs = np.fromfile(d / f"{name}.bin", dtype=np.uint16)
        if ours.dtype != np.uint16 or not np.array_equal(ours, theirs):
            raise SystemExit(f"our {name} split differs from nanoGPT's {name}.bin "
                             f"({len(ours)} and {len(theirs)} tokens)")
    return (f"our `load_dataset(\"text:PATH\")` gives nanoGPT's `train.bin` and `val.bin` "
            f"token for token ({len(corpus.train):,} and {len(corpus.val):,} uint16 tokens, "
            f"vocabulary of {corpus.vocab_size})")


def run_nanogpt(root: Path, seed: int, python: str, max_iters: int, work: Path,
                eval_interval: int | None = None) -> dict:
    """One seed of nanoGPT's CPU run: its evaluations, iteration times, load and a sample."""
    out_dir = work / f"nanogpt-seed{seed}"
    cmd = [python, "-c", _SEEDED_TRAIN, str(seed), "config/train_shakespeare_char.py",
           *NANOGPT_FLAGS, f"--max_iters={max_iters}", f"--lr_decay_iters={max_iters}",
           f"--out_dir={out_dir}"]
    if eval_interval is not None:
        cmd.append(f"--eval_interval={eval_interval}")
    t0 = time.perf_counter()
    with LoadMeter() as load:
        text = _stream(cmd, root, work / f"nanogpt-seed{seed}.log",
                       lambda line: line.startswith(("step ", "torch ")))
    result = parse_nanogpt_log(text)
    result.update(load.summary(), wall_seconds=time.perf_counter() - t0,
                  threads=re.search(r"threads (\d+)", text)[1] if "threads" in text else "?",
                  torch=re.search(r"^torch (\S+),", text, re.M)[1] if "torch " in text else "?")
    result["val_loss"] = result["evals"][-1]["val_loss"]
    result["train_loss"] = result["evals"][-1]["train_loss"]
    if (out_dir / "ckpt.pt").is_file():
        result["sample"] = subprocess.run(
            [python, "-c", _SAMPLE, str(out_dir), str(SAMPLE_CHARS), str(seed)], cwd=root,
            capture_output=True, text=True, check=True).stdout
    return result


# --------------------------------------------------------------- our side

def run_ours(data: Path, seed: int, max_iters: int, work: Path,
             eval_interval: int | None = None) -> dict:
    """One seed of ours: ``functional-bp train`` with the issue's exact flags, then ``sample``.

    It calls the command line as the issue states it (``train --data
    text:PATH --model "gpt ..." --max-iters ...``, the recipe
    ``shakespeare-char-cpu`` with ``--data``; :mod:`functional_bp.lm_run`)
    and reads back its ``metrics.json`` (``evals``, a list of ``{"iter",
    "train_loss", "val_loss"}``; ``val_loss``, ``train_loss``;
    ``train_seconds``, the wall time of the training loop, compilation and
    evaluations included), then ``sample --from DIR --tokens 500 --seed S``
    (decoded with the vocabulary saved in the checkpoint; ``best.npz``, the
    evaluation with the lowest validation loss). A command that fails is
    reported by :func:`main` as not run, with its error; it never makes
    numbers up.
    """
    out = work / f"ours-seed{seed}"
    cmd = [sys.executable, "-m", "functional_bp", "train", "--data", f"text:{data}",
           "--model", OUR_MODEL, "--batch-size", "12", "--max-iters", str(max_iters),
           "--lr-decay-iters", str(max_iters), "--eval-iters", "20", "--seed", str(seed),
           "--out", str(out)]
    if eval_interval is not None:
        cmd += ["--eval-interval", str(eval_interval)]
    t0 = time.perf_counter()
    with LoadMeter() as load:
        _stream(cmd, HERE.parent, work / f"ours-seed{seed}.log", lambda line: False)
    metrics = json.loads((out / "metrics.json").read_text())
    result = {"evals": metrics["evals"], "val_loss": metrics["val_loss"],
              "train_loss": metrics["train_loss"], "train_seconds": metrics["train_seconds"],
              "wall_seconds": time.perf_counter() - t0, **load.summary()}
    steps = max(e["iter"] for e in metrics["evals"])
    result["ms_per_iter"] = 1e3 * metrics["train_seconds"] / max(steps, 1)
    result["sample"] = subprocess.run(
        [sys.executable, "-m", "functional_bp", "sample", "--from", str(out), "--tokens",
         str(SAMPLE_CHARS), "--seed", str(seed)], capture_output=True, text=True,
        check=True).stdout
    return result


# ------------------------------------------------------------------ report

def _median_step_ms(r):
    """nanoGPT: the median iteration time, evaluation iterations excluded."""
    if "iter_ms" not in r:
        return r.get("ms_per_iter", float("nan"))
    evals = {e["iter"] for e in r["evals"]}
    return statistics.median(ms for i, ms in enumerate(r["iter_ms"]) if i not in evals)


def render(runs: dict, a, notes: list[str], elapsed: float, command: str) -> str:
    sides = [s for s in ("nanoGPT", "ours") if runs.get(s)]
    rows = []
    for side in sides:
        for seed, r in runs[side].items():
            if isinstance(r, str):
                rows.append((side, seed, "not run", "", "", "", r))
                continue
            rows.append((side, seed, f"{r['val_loss']:.4f}", f"{r['train_loss']:.4f}",
                         f"{r['train_seconds']:.1f} s", f"{_median_step_ms(r):.1f} ms",
                         f"{r['load_mean']:.2f} (max {r['load_max']:.2f})"))
    means = {}
    for side in sides:
        done = [r for r in runs[side].values() if not isinstance(r, str)]
        if done:
            means[side] = (statistics.mean(r["val_loss"] for r in done),
                           statistics.mean(r["train_seconds"] for r in done), len(done))
    summary = [f"- {side}: mean final validation loss {v:.4f}, mean training-loop time "
               f"{t:.1f} s ({n} seed(s))" for side, (v, t, n) in means.items()]
    if "ours" in means and "nanoGPT" in means:
        (v, t, _), (vn, tn, _) = means["ours"], means["nanoGPT"]
        summary.append(f"- targets: ours <= {TARGET_VAL_LOSS}: {v:.4f} "
                       f"({'met' if v <= TARGET_VAL_LOSS else 'missed'}); within {TARGET_GAP} "
                       f"of nanoGPT: {v - vn:+.4f} ({'met' if abs(v - vn) <= TARGET_GAP else 'missed'}); "
                       f"time <= nanoGPT's: {t:.1f} s against {tn:.1f} s "
                       f"({'met' if t <= tn else 'missed'})")
    curves = []
    for side in sides:
        for seed, r in runs[side].items():
            if not isinstance(r, str):
                curves.append((side, seed, " / ".join(f"{e['iter']}: {e['val_loss']:.4f}"
                                                       for e in r["evals"])))
    samples = []
    for side in sides:
        seed, r = next(iter(runs[side].items()))
        if not isinstance(r, str) and r.get("sample"):
            samples += [f"{side}, seed {seed}:", "", "```", r["sample"].strip("\n"), "```", ""]
    label = a.label or f"nanoGPT shakespeare_char CPU run: {report.default_label()}"
    torch_versions = {r.get("torch") for r in runs.get("nanoGPT", {}).values()
                      if not isinstance(r, str)}
    threads = {r.get("threads") for r in runs.get("nanoGPT", {}).values()
               if not isinstance(r, str)}
    return "\n".join([
        f"## {label}", "",
        f"{report.now()}, {elapsed:.0f} s in all. Command:", "",
        f"```\n{command}\n```", "",
        f"nanoGPT's README CPU run (`train.py config/train_shakespeare_char.py "
        f"{' '.join(NANOGPT_FLAGS)} --max_iters={a.max_iters} --lr_decay_iters={a.max_iters}`"
        f", PyTorch {', '.join(sorted(torch_versions)) or '?'} with "
        f"{', '.join(sorted(threads)) or '?'} threads) beside ours (`functional-bp train "
        f"--data text:PATH --model \"{OUR_MODEL}\" --batch-size 12 --max-iters {a.max_iters} "
        f"--lr-decay-iters {a.max_iters} --eval-iters 20`), alternating seed by seed. Loss: "
        "the last evaluation's (mean over 20 random batches of each split). Time: the "
        "training loop's wall time (nanoGPT: the sum of its printed iteration times, "
        "evaluations included; ours: `train_seconds`). ms/step: nanoGPT's median over "
        "iterations without an evaluation; ours: `train_seconds` over the iterations, "
        "evaluations included. Load: the 1-minute load average during the run "
        f"on a machine of {os.cpu_count()} cores.", "",
        *notes, "",
        report.table(["side", "seed", "val loss", "train loss", "time", "ms/step", "load"],
                     rows), "",
        *summary, "",
        "Validation curves:", "",
        report.table(["side", "seed", "iteration: val loss"], curves), "",
        f"Samples ({SAMPLE_CHARS} characters; nanoGPT's sample.py settings: start \"\\n\", "
        "temperature 0.8, top_k 200):", "",
        *samples,
        report.kv_table(report.machine() + report.versions()),
    ])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", type=Path, required=True,
                   help="a copy of the karpathy/nanoGPT repository")
    p.add_argument("--data", type=Path, required=True, help="the text (tiny Shakespeare)")
    p.add_argument("--torch-python", default=os.environ.get("BENCH_PYTHON", sys.executable),
                   help="the Python with PyTorch and numpy for nanoGPT's side [$BENCH_PYTHON "
                        "or this Python]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--eval-interval", type=int, default=None,
                   help="evaluate every N iterations, for short trial runs [nanoGPT's config: "
                        "250; not passed unless given]")
    p.add_argument("--sides", nargs="+", default=["nanoGPT", "ours"], choices=["nanoGPT", "ours"])
    p.add_argument("--work", type=Path, default=None,
                   help="a scratch folder for the runs' files [a temporary folder]")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--label", default=None)
    a = p.parse_args(argv)
    if not a.data.is_file():
        raise SystemExit(f"--data {a.data}: no such file (the tiny Shakespeare text: char-rnn's "
                         "data/tinyshakespeare/input.txt)")
    data = a.data.resolve()
    work = a.work or Path(tempfile.mkdtemp(prefix="nanogpt_table_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"scratch folder: {work}", flush=True)

    t_start = time.perf_counter()
    notes = []
    root = None
    if "nanoGPT" in a.sides:
        root = prepare_nanogpt(a.nanogpt.resolve(), data, work, a.torch_python)
        try:
            notes.append(check_same_tokens(root, data) + ".")
        except ImportError as e:
            notes.append(f"(tokens not compared with ours: {e})")
    runs = {side: {} for side in a.sides}
    for seed in a.seeds:
        for side in a.sides:
            print(f"{side}, seed {seed}:", flush=True)
            try:
                if side == "nanoGPT":
                    r = run_nanogpt(root, seed, a.torch_python, a.max_iters, work,
                                    a.eval_interval)
                else:
                    r = run_ours(data, seed, a.max_iters, work, a.eval_interval)
            except (RuntimeError, OSError, KeyError, ValueError,
                    subprocess.CalledProcessError) as e:
                if side == "nanoGPT":
                    raise
                first = str(e).strip().splitlines()
                runs[side][seed] = f"failed: {first[-1] if first else type(e).__name__}"
                print(f"    ours not run: {runs[side][seed]}", flush=True)
                continue
            runs[side][seed] = r
            print(f"    final val loss {r['val_loss']:.4f}, training loop {r['train_seconds']:.1f} s,"
                  f" {_median_step_ms(r):.1f} ms/step, load {r['load_mean']:.2f}", flush=True)
    elapsed = time.perf_counter() - t_start

    args = list(argv if argv is not None else sys.argv[1:])
    for flag in ("--out", "--work"):  # where files go is not part of what was measured
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
    command = "python benchmarks/nanogpt_table.py " + " ".join(args)
    body = render(runs, a, notes, elapsed, command)
    label = body.splitlines()[0][3:]
    report.write_block(Path(a.out), label, body)
    print(f"wrote the block {label!r} of {a.out}")
    return runs


if __name__ == "__main__":
    main()
