"""``functional-bp bench``: run the repository's benchmark harness.

The harness lives in ``benchmarks/`` at the root of a source checkout, not in
the installed package: it compares against NumPy, PyTorch and scikit-learn,
which the library must not depend on. This module only finds
``benchmarks/run.py`` and runs it with the given arguments; every option is
the script's own (``functional-bp bench --help`` lists them).

The script is looked for, in order, in ``$FUNCTIONAL_BP_BENCHMARKS`` (a
folder), next to the package (an editable install or a checkout on
``PYTHONPATH``), and under the current directory.

Example (from a checkout)::

    functional-bp bench --shapes tiny --sections grad-step --out /tmp/results.md
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from pathlib import Path

SCRIPT = Path("benchmarks") / "run.py"


def find_script() -> Path | None:
    """The path of ``benchmarks/run.py``, or None when no checkout is at hand."""
    candidates = []
    if os.environ.get("FUNCTIONAL_BP_BENCHMARKS"):
        candidates.append(Path(os.environ["FUNCTIONAL_BP_BENCHMARKS"]) / "run.py")
    candidates.append(Path(__file__).resolve().parents[1] / SCRIPT)
    candidates.append(Path.cwd() / SCRIPT)
    return next((p for p in candidates if p.is_file()), None)


def main(argv=None) -> int:
    """Run ``benchmarks/run.py`` with ``argv``; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script = find_script()
    if script is None:
        print(
            "functional-bp bench: benchmarks/run.py was not found. The benchmarks are "
            "part of the source repository, not of the installed package: run this "
            "command from a checkout (or an editable install of one), or set "
            "FUNCTIONAL_BP_BENCHMARKS to the checkout's benchmarks/ folder.",
            file=sys.stderr,
        )
        return 2
    spec = importlib.util.spec_from_file_location("functional_bp_benchmarks_run", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if "--command" not in argv:
        argv += ["--command", shlex.join(["functional-bp", "bench", *argv])]
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
