"""Build the derivation notebooks from their sources, execute them, save them.

Each notebook is written as a plain Python file in ``notebooks/src/`` in the
"percent" format: a line ``# %%`` starts a code cell, a line
``# %% [markdown]`` starts a markdown cell whose lines are comments (``# ``
is stripped). This script turns each source into ``notebooks/NN-name.ipynb``,
runs it top to bottom in a fresh kernel and saves it *with* its outputs, so a
reader who opens the notebook on the web sees the plots and numbers.

    python notebooks/build.py             # rebuild and re-execute every notebook
    python notebooks/build.py 03 05       # only those whose name starts with 03 or 05
    python notebooks/build.py --no-run    # rewrite the cells only (outputs dropped)

``tests/test_notebooks.py`` executes every notebook afresh and checks that the
committed ``.ipynb`` holds exactly the cells :func:`build` produces, so a
notebook whose source changed without a rebuild is caught.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
CELL_TIMEOUT_S = 120
"""Per-cell time limit when executing (each notebook runs in well under a minute)."""

KERNEL_SPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def names() -> list[str]:
    """The notebook names, in reading order: ``["01-one-neuron", ...]``."""
    return sorted(p.stem for p in SRC.glob("[0-9][0-9]-*.py"))


def parse_cells(text: str) -> list[tuple[str, str]]:
    """Split a percent-format source into ``[(cell_type, source), ...]``.

    Text before the first marker is ignored (a module docstring, say). Blank
    lines at either end of a cell are dropped.
    """
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        stripped = line.rstrip()
        if stripped == "# %% [markdown]":
            cells.append(("markdown", []))
        elif stripped == "# %%":
            cells.append(("code", []))
        elif cells:
            kind, lines = cells[-1]
            if kind == "markdown":
                if stripped and not (stripped == "#" or stripped.startswith("# ")):
                    raise ValueError(f"markdown line is not a comment: {line!r}")
                line = stripped[2:]
            lines.append(line.rstrip())
    out = []
    for kind, lines in cells:
        source = "\n".join(lines).strip("\n")
        if source:
            out.append((kind, source))
    return out


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` with its cells and no outputs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNEL_SPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(parse_cells((SRC / f"{name}.py").read_text())):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(source)
        cell["id"] = f"cell-{i:02d}"  # stable ids: rebuilding changes no line needlessly
        nb.cells.append(cell)
    return nb


def execute(nb: nbformat.NotebookNode, *, timeout: int = CELL_TIMEOUT_S):
    """Run every cell in a fresh kernel (working directory ``notebooks/``).

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing
    cell (a failed ``assert`` included).
    """
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(HERE)}},
    )
    client.execute()
    nb.metadata["kernelspec"] = dict(KERNEL_SPEC)  # keep the metadata stable
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    return nb


def merge_streams(outputs):
    """Join consecutive stdout (or stderr) chunks into one output.

    How printed text is split into chunks depends on timing; merged, the saved
    outputs are the same from one run to the next.
    """
    merged = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (out.output_type == "stream" and prev is not None
                and prev.output_type == "stream" and prev.name == out.name):
            prev.text += out.text
        else:
            merged.append(out)
    return merged


def main(argv: list[str]) -> int:
    run = "--no-run" not in argv
    prefixes = [a for a in argv if not a.startswith("--")]
    selected = [n for n in names() if not prefixes or n.startswith(tuple(prefixes))]
    if not selected:
        print(f"no notebook matches {prefixes}; have {names()}", file=sys.stderr)
        return 2
    for name in selected:
        t0 = time.perf_counter()
        nb = build(name)
        if run:
            execute(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"{name}.ipynb  {'executed' if run else 'cells only'}"
              f"  {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
