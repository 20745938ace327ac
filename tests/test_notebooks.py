"""The derivation notebooks: each runs top to bottom, and each is current.

Every notebook asserts its formulas against ``jax.grad`` in its own cells, so
executing it is the test: any failing cell (an ``assert`` included) fails here.
The committed ``.ipynb`` files keep their outputs for readers; the second test
checks that their cells are exactly what ``notebooks/build.py`` makes from the
sources in ``notebooks/src/``, so an edited source without a rebuild fails.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")  # notebook 5 trains on scikit-learn's bundled digits
pytest.importorskip("hypothesis")  # notebook 6 runs a small property test

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MAX_NOTEBOOK_BYTES = 400_000  # plots are small PNGs; no large printed arrays


def _load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
NAMES = build.names()


def _cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


def test_the_series_is_complete():
    assert NAMES[:4] == [
        "01-one-neuron",
        "02-chain-of-neurons",
        "03-many-neurons",
        "04-batches-and-layouts",
    ]
    committed = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert committed == NAMES, "each source in notebooks/src has exactly one .ipynb"


@pytest.mark.parametrize("name", NAMES)
def test_every_notebook_checks_against_autodiff(name):
    code = "\n".join(src for kind, src in _cells(build.build(name)) if kind == "code")
    assert "jax.grad" in code or "check_gradients" in code
    assert "assert" in code or "raise_if_failed" in code


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_current_and_executed(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    committed = nbformat.read(path, as_version=4)
    assert _cells(committed) == _cells(build.build(name)), (
        f"{path.name} is stale: run `python notebooks/build.py {name[:2]}`"
    )
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "saved without running"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} was saved with an error output"
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name):
    nb = build.build(name)
    build.execute(nb)  # raises CellExecutionError on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert any(c.outputs for c in code)


def test_parse_cells_rejects_markdown_that_is_not_a_comment():
    good = "# %% [markdown]\n# # Title\n#\n# text\n# %%\nx = 1\n\n"
    assert build.parse_cells(good) == [("markdown", "# Title\n\ntext"), ("code", "x = 1")]
    with pytest.raises(ValueError, match="not a comment"):
        build.parse_cells("# %% [markdown]\nplain text\n")
