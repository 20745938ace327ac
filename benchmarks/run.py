"""Run the benchmarks and (re)write benchmarks/RESULTS.md.

Usage (from the repository root)::

    python benchmarks/run.py                           # everything, ~10 min on 2 cores
    python benchmarks/run.py --shapes tiny --sections grad-step --blocks 2 \\
        --out /tmp/results.md                          # a quick look
    python benchmarks/run.py --label "GPU: H100" --out benchmarks/RESULTS.md

Sections:
  grad-step  one loss-and-grads step at each shape: ours, ours jitted,
             jax.value_and_grad, NumPy, PyTorch (when installed); GFLOP/s,
             fraction of a matmul peak measured in the same run, compiled-HLO
             summary, first-call (compile) time on a fresh shape
  scan       100 SGD steps at the tiny shape: lax.scan vs a Python loop
  training   digits, hidden 128 relu, batch 32, 50 epochs: fused epochs vs a
             Python loop of jitted steps vs scikit-learn's MLPClassifier
  dp-sgd     clipped_grad and per_example_grad_norms vs jax.vmap(jax.grad)

The output file keeps one block per ``--label``: a run replaces its own block
and leaves the others (see report.py).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # sibling modules: timing, grad_step, ...
sys.path.insert(1, str(HERE.parent))  # the repository root: functional_bp, benchmarks.*

SECTIONS = ("grad-step", "scan", "training", "dp-sgd")


def parse_args(argv=None):
    import grad_step

    p = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, among {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--shapes", default=",".join(grad_step.SHAPES),
                   help=f"comma-separated, among {', '.join(grad_step.SHAPES)} (default: all)")
    p.add_argument("--blocks", type=int, default=20, help="alternating blocks (default 20)")
    p.add_argument("--reps", type=int, default=2, help="samples per block (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls (default 3)")
    p.add_argument("--min-sample-s", type=float, default=0.05,
                   help="shortest duration of one sample in seconds (default 0.05)")
    p.add_argument("--compile-reps", type=int, default=3,
                   help="first calls timed per shape for the compile time (default 3)")
    p.add_argument("--peak-n", type=int, default=None,
                   help="matmul size for the peak (default 2048 on CPU, 8192 on GPU)")
    p.add_argument("--epochs", type=int, default=50, help="training epochs (default 50)")
    p.add_argument("--training-reps", type=int, default=3,
                   help="timed training runs per implementation (default 3)")
    p.add_argument("--dp-blocks", type=int, default=5,
                   help="alternating blocks of the DP-SGD section (default 5; the vmap "
                        "route takes seconds per call)")
    p.add_argument("--no-numpy", action="store_true", help="leave the NumPy baseline out")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch CPU threads (default: the cores this process may use)")
    p.add_argument("--matmul-precision", default=None, choices=["default", "high", "highest"],
                   help="jax_default_matmul_precision for the run (default: JAX's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default=None,
                   help="the run's name in the output file (default: backend and device)")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"),
                   help="the Markdown file to update (default benchmarks/RESULTS.md)")
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)  # set by `functional-bp bench`
    args = p.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    args.shapes = [s for s in args.shapes.split(",") if s]
    for s in args.sections:
        if s not in SECTIONS:
            p.error(f"unknown section {s!r}; valid: {', '.join(SECTIONS)}")
    for s in args.shapes:
        if s not in grad_step.SHAPES:
            p.error(f"unknown shape {s!r}; valid: {', '.join(grad_step.SHAPES)}")
    return args


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    if args.matmul_precision:
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)

    import report
    import sections

    command = args.command or "python " + shlex.join(
        [os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "benchmarks/run.py"]
        + (sys.argv[1:] if argv is None else list(argv))
    )
    label = args.label or report.default_label()
    started = time.perf_counter()
    context = sections.Context(args=args, log=log)
    header_machine = report.machine()
    for name in args.sections:
        sections.RUNNERS[name](context)
    elapsed = time.perf_counter() - started
    header_machine.append(("load average at end", " ".join(f"{v:.2f}" for v in os.getloadavg())))

    body = sections.render(context, label=label, command=command, machine=header_machine,
                           versions=report.versions(), date=report.now(), elapsed=elapsed)
    out = Path(args.out)
    report.write_block(out, label, body)
    log(f"wrote {out} (run label {label!r}, {elapsed:.0f} s)")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
