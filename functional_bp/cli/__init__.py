"""The command line: ``functional-bp train``, ``sample``, ``check`` and ``bench``.

One module per command, each a thin layer over library functions: a module
``functional_bp.cli.<name>`` has ``add(sub)``, which adds its subparser and
options, and ``run(args, parser)``, which runs it and returns the exit
status. :data:`COMMANDS` lists the modules, so a new command is its module
and one more name there.

Examples (docs/cli.md has one for every option)::

    functional-bp train --out runs/digits            # the defaults: digits, 97%+
    functional-bp train --recipe mnist1d-cnn --seed 1   # a published number
    functional-bp train --recipe list                # the recipes and what each gives
    functional-bp train --data moons --hidden 16 16 --activation tanh --epochs 100
    functional-bp train --resume runs/digits/params.npz --epochs 10 --out runs/more
    functional-bp train --data mnist1d --val-fraction 0.1 --patience 10 --schedule cosine
    functional-bp train --model "resmlp width=64 blocks=1"      # a named network, options
    functional-bp train --model "dense 64, relu, res(layernorm, dense 64, relu), dense 10"
    functional-bp train --data sort --model "gpt n_layer=3 n_head=3 n_embd=48 dropout=0.1" \\
        --batch-size 64 --lr 5e-4 --max-iters 2000 --out runs/sort   # minGPT's sort demo
    functional-bp sample --from runs/shakespeare --prompt "ROMEO:" --tokens 200 --seed 1
    functional-bp check runs/digits/params.npz       # the per-layer proof
    functional-bp check runs/digits/params.npz --data digits   # ... on real rows
    functional-bp check --model resmlp --data digits            # a random network
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..experiment import TRAIN_DEFAULTS  # noqa: F401  (benchmarks read the defaults here)
from ._args import UsageError

COMMANDS = ("train", "sample", "check", "bench")
"""The commands, in the order of ``--help``: each the module ``functional_bp.cli.<name>``."""


def build_parser():
    """``(parser, {command: its subparser})``."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="functional-bp",
        description="Backpropagation derived by hand, in JAX, checked against jax.grad.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {name: _module(name).add(sub) for name in COMMANDS}
    return parser, subparsers


def _module(name):
    return importlib.import_module(f"{__name__}.{name}")


def main(argv=None) -> int:
    """Run ``functional-bp``; returns the exit status (argparse exits 2 on bad usage)."""
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    try:
        return _module(args.command).run(args, subparsers[args.command])
    except UsageError as e:
        subparsers[args.command].error(str(e))
    except ImportError as e:
        print(f"functional-bp {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
