"""``functional-bp bench``: the benchmark harness of a source checkout (:mod:`functional_bp.bench`)."""

from __future__ import annotations

from .. import bench


def add(sub):
    """Add ``bench``: every argument after it goes to ``benchmarks/run.py`` untouched.

    The harness's own parser reads them (``functional-bp bench --help`` shows
    its options), so the subparser declares no options of its own.
    """
    p = sub.add_parser(
        "bench", prefix_chars="+", add_help=False,
        help="run the benchmarks of a source checkout (benchmarks/run.py)",
        description="Run benchmarks/run.py with the arguments given; see --help.",
    )
    p.add_argument("bench_args", nargs="*")
    return p


def run(args, parser=None) -> int:
    """Run the harness with the arguments collected by :func:`add`."""
    return bench.main(list(args.bench_args))
