"""Test accuracy of private training (DP-SGD) at epsilon 1, 3 and 8, next to non-private.

Every run is one ``functional-bp train --recipe NAME --seed S`` command, run
in this process (``functional_bp.cli.main``) so that the seeds of a
configuration share their compiled programs; each table cell is a shipped
recipe (``functional_bp/recipes/``: ``digits-nonprivate``, ``digits-dp-eps1``,
``digits-dp-eps3``, ``digits-dp-eps8``, and the same for ``mnist1d``), whose
file holds the settings this script used to restate. The model is the command line's default network, the
dense chain [n_0, 256, n_L] with relu (He init), trained with Adam; the
private runs add ``--dp-clip 1 --dp-epsilon EPS``: Poisson sampling with
expected batch size ``--batch-size`` (round(N / batch size) steps per epoch),
each example's gradient clipped to norm 1, the noise multiplier calibrated
so that the RDP accountant's epsilon after the run's steps is EPS, at delta
the default (the largest power of ten <= 1/(10 N)). The non-private runs are
the same commands without the --dp options (shuffled minibatches of the same
size, same epochs, same learning rate).

The settings (batch 128, learning rate 0.01, 15 epochs) were chosen for a
short run on 2 busy cores from a handful of tries at epsilon 3 (batch 64 and
128, learning rate 0.003 and 0.01); they are not tuned per epsilon.

The table goes into ``benchmarks/RESULTS.md`` as its own block
(``report.write_block``), with the commands.

``--lm`` runs the language-model table instead (``benchmarks/dp_lm_table.py``:
a character GPT on tiny Shakespeare at epsilon 3 and 8 next to non-private,
validation loss and samples).

Run::

    python benchmarks/dp_table.py                       # digits and mnist1d, ~5 min
    python benchmarks/dp_table.py --data digits --out /tmp/r.md
    python benchmarks/dp_table.py --lm --data tinyshakespeare.txt --readme README.md
"""

from __future__ import annotations

import argparse
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

EPSILONS = (1.0, 3.0, 8.0)
SEEDS = (0, 1, 2)
DATASETS = ("digits", "mnist1d")


def recipe(data, eps):
    """The recipe of a table cell: ``digits-nonprivate``, ``digits-dp-eps3``, ..."""
    return f"{data}-nonprivate" if eps is None else f"{data}-dp-eps{eps:g}"


def command(data, seed, eps):
    return ["train", "--recipe", recipe(data, eps), "--seed", str(seed)]


def run(argv, folder):
    """One CLI run; its metrics.json."""
    out = os.path.join(folder, "run")
    code = cli_main([*argv, "--quiet", "--save-every", "0", "--out", out])
    if code != 0:
        raise SystemExit(f"functional-bp {shlex.join(argv)} exited with {code}")
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def cell(values):
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    each = ", ".join(f"{100 * v:.1f}" for v in values)
    return f"{100 * mean:.1f} ± {100 * sd:.1f} ({each})"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--lm" in argv:  # the language-model table (benchmarks/dp_lm_table.py)
        import dp_lm_table

        return dp_lm_table.main([a for a in argv if a != "--lm"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=",".join(DATASETS), help="comma-separated data sets")
    ap.add_argument("--seeds", type=int, default=len(SEEDS))
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    a = ap.parse_args(argv)
    label = a.label or f"DP-SGD accuracy: {report.default_label()}"
    machine = report.machine()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for data in a.data.split(","):
            for eps in (None, *EPSILONS):
                t0 = time.perf_counter()
                results = [run(command(data, seed, eps), folder) for seed in range(a.seeds)]
                seconds = time.perf_counter() - t0
                accs = [m["test_accuracy"] for m in results]
                dp = results[0]["dp"]
                rows.append(dict(
                    data=data, n=results[0]["dataset"]["n_train"], eps=eps, accs=accs,
                    spent=None if dp is None else max(m["dp"]["epsilon"] for m in results),
                    sigma=None if dp is None else dp["plan"]["noise_multiplier"],
                    delta=None if dp is None else dp["plan"]["delta"],
                    clip=results[0]["config"]["dp_clip"],
                    steps=None if dp is None else dp["steps"], seconds=seconds))
                print(f"{data} epsilon {eps}: {cell(accs)} ({seconds:.1f} s)", flush=True)
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()
    machine.append(("load average at end", " ".join(f"{v:.2f}" for v in load_end)))

    cmd = "python " + shlex.join(["benchmarks/dp_table.py"] + argv)
    out = [f"## {label}", "", f"Command: `{cmd}` ({report.now()}, {elapsed:.0f} s in all)", ""]
    out += [f"- {k}: {v}" for k, v in machine]
    out += ["", "Test accuracy (%) of the command line's default network [n_0, 256, n_L] "
            "(relu, Adam), mean ± standard deviation over seeds "
            f"{', '.join(str(s) for s in range(a.seeds))} (each seed in brackets). Every "
            "row is these commands, one per seed:", ""]
    for data in a.data.split(","):
        out.append(f"    functional-bp {shlex.join(command(data, 0, None))}")
        out.append(f"    functional-bp {shlex.join(command(data, 0, 3.0))}  "
                   "# and --dp-epsilon 1, 8")
    out += ["", "| data (N train) | training | ε target | δ | σ (calibrated) | steps | "
            "ε spent | test accuracy % | seconds (all seeds) |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if r["eps"] is None:
            out.append(f"| {r['data']} ({r['n']}) | non-private | – | – | – | – | – | "
                       f"{cell(r['accs'])} | {r['seconds']:.0f} |")
        else:
            out.append(f"| {r['data']} ({r['n']}) | DP-SGD, clip {r['clip']:g} | {r['eps']:g} | "
                       f"{r['delta']:g} | {r['sigma']:.3f} | {r['steps']} | "
                       f"{r['spent']:.3f} | {cell(r['accs'])} | {r['seconds']:.0f} |")
    out += ["", "δ is the default, the largest power of ten ≤ 1/(10 N), below 1/N; ε spent "
            "is the RDP accountant's after the last step (at most the target: the noise "
            "is calibrated to it). The seconds include compiling, once per row, and "
            "another job on the same 2 cores."]
    body = "\n".join(out) + "\n"
    report.write_block(Path(a.out), label, body)
    print(body)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
