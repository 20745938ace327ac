"""The documentation proves itself: every Python block runs, the site builds strictly.

1. Every ```` ```python ```` block of README.md and docs/*.md is executed, in
   page order, in one namespace per page (a page reads as one program). The
   blocks are parsed by sybil; ``console``/``bash`` blocks and plain fences
   are not Python and are not run. A block that needs something slow or
   optional is preceded by ``<!-- skip: next "reason" -->`` and reported
   here as skipped with that reason.
2. ``mkdocs build --strict`` builds the site into a temporary folder (broken
   links, missing pages and unresolved API references fail the build), and
   the built pages are checked as a reader would find them: each page of the
   navigation exists and holds no error marker, the API pages document every
   public name (``__all__``) of ``functional_bp``, ``functional_bp.layers``,
   ``functional_bp.models`` and ``functional_bp.privacy``, the benchmarks page holds
   benchmarks/RESULTS.md as generated, and the notebooks show their plots.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --- 1. the code blocks ---------------------------------------------------

def _blocks():
    """(path, line) of every Python block, without needing sybil to list them."""
    out = []
    for path in PAGES:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"^```+\s*python\b", line):
                out.append((path, i))
    return out


_documents: dict = {}


def _document(path):
    """The sybil document of a page, parsed once, with its evaluation state."""
    if path not in _documents:
        sybil = pytest.importorskip("sybil", reason="the docs extra: pip install -e '.[docs]'")
        from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

        doc = sybil.Sybil(parsers=[PythonCodeBlockParser(), SkipParser()]).parse(path)
        _documents[path] = {"examples": list(doc), "next": 0, "failed": None}
    return _documents[path]


def _run_through(path, line, cwd):
    """Evaluate the page's examples in order up to and including the one at ``line``."""
    state = _document(path)
    examples = state["examples"]
    target = next((k for k, e in enumerate(examples) if e.line == line), None)
    assert target is not None, f"sybil found no Python block at {path.name}:{line}"
    skipped = None
    while state["next"] <= target:
        if state["failed"] is not None:
            pytest.skip(f"an earlier block of {path.name} failed (line {state['failed']})")
        example = examples[state["next"]]
        state["next"] += 1
        old = os.getcwd()
        os.chdir(cwd)  # blocks that write files write them here, not into the checkout
        try:
            example.evaluate()
        except unittest.SkipTest as e:
            if example.line == line:
                skipped = str(e)
        except BaseException:
            state["failed"] = example.line
            raise
        finally:
            os.chdir(old)
    if skipped is not None:
        pytest.skip(f"{path.name}:{line}: {skipped}")


@pytest.mark.parametrize(
    "path,line", _blocks(), ids=[f"{p.relative_to(ROOT)}:{n}" for p, n in _blocks()]
)
def test_code_block_runs(path, line, tmp_path_factory):
    cwd = tmp_path_factory.mktemp(path.stem)
    _run_through(path, line, cwd)


def test_every_page_is_scanned():
    # Guards the block finder itself: the README and the pages hold Python blocks.
    counted = {p.name for p, _ in _blocks()}
    assert "README.md" in counted and "beyond-autodiff.md" in counted, counted


# --- 2. the site --------------------------------------------------------

ERROR_MARKERS = [
    "Traceback (most recent call last)",  # an exception printed into a page
    "--8<--",                              # a snippet include that did not happen
    "\n::: functional_bp",                 # an API directive left as text
    "<p>::: ",
    "autoref identifier",                  # a cross-reference left unresolved
]


def _nav_pages(nav):
    for entry in nav:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from _nav_pages(value if isinstance(value, list) else [value])


def _html_of(site, page):
    stem = page[: -len(Path(page).suffix)]
    return site / ("index.html" if stem == "index" else f"{stem}/index.html")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _nav():
    import yaml

    class Loader(yaml.SafeLoader):  # mkdocs.yml may hold !!python/name tags
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)["nav"]


def test_every_page_is_built_without_error_markers(site):
    pages = list(_nav_pages(_nav()))
    assert len(pages) >= 10, pages
    for page in pages:
        html_path = _html_of(site, page)
        assert html_path.is_file(), f"{page}: no {html_path.relative_to(site)} in the built site"
        html = html_path.read_text(encoding="utf-8")
        for marker in ERROR_MARKERS:
            if marker.startswith("Traceback") and page.startswith("api"):
                continue  # a docstring's example of an error (run by the doctests)
            assert marker not in html, f"{page}: the built page contains {marker!r}"


def public_names(module):
    """A module's public names: its ``__all__``, else the names it defines without a _."""
    import inspect

    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and not inspect.ismodule(obj)
            and getattr(obj, "__module__", module.__name__).startswith(module.__name__)]


API_MODULES = ["functional_bp", "functional_bp.layers", "functional_bp.models",
               "functional_bp.privacy"]
"""The modules whose every public name must have an entry in the API reference."""


def test_public_names_are_found():
    # Guards public_names itself: a module without __all__ still yields its names.
    import functional_bp.models as models

    names = public_names(models)
    assert {"build", "mlp", "cnn", "MODELS"} <= set(names), names
    assert "re" not in names and "Sequential" not in names, names


@pytest.mark.parametrize("module_name", API_MODULES)
def test_api_pages_document_every_public_name(site, module_name):
    import importlib

    module = importlib.import_module(module_name)
    ids = set()
    for page in (ROOT / "docs").glob("*.md"):
        path = _html_of(site, page.name)
        if path.is_file():
            ids |= set(re.findall(r'id="(functional_bp(?:\.\w+)+)"', path.read_text("utf-8")))
    if module_name == "functional_bp":  # the top-level names may be documented at their home
        documented = {i.rsplit(".", 1)[-1] for i in ids}
        missing = [n for n in public_names(module) if n not in documented]
    else:
        missing = [n for n in public_names(module) if f"{module_name}.{n}" not in ids]
    assert not missing, (f"public names of {module_name} with no entry in the API reference "
                         f"(add a line '::: {module_name}.NAME' to its docs/api-*.md page): "
                         f"{missing}")


def test_table_code_breaks_only_at_spaces_and_wide_equations_scroll(site):
    # Material lets inline code break anywhere (word-break: break-word), which split
    # names such as sq_norms in the narrow columns of the layers table.
    html = _html_of(site, "layers.md").read_text(encoding="utf-8")
    assert "assets/extra.css" in html
    css = (site / "assets" / "extra.css").read_text(encoding="utf-8")
    rule = re.search(r"table:not\(\[class\]\) code \{([^}]*)\}", css)
    assert rule and "word-break: normal" in rule.group(1), css
    assert re.search(r"\.katex-display[^{]*\{[^}]*overflow-x: auto", css, re.S), css


def test_benchmarks_page_includes_results_as_generated(site):
    html = _html_of(site, "benchmarks.md").read_text(encoding="utf-8")
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,3} (.+)$", results, flags=re.M)
    assert headings, "benchmarks/RESULTS.md has no sections"
    for heading in headings:
        text = re.sub(r"`([^`]*)`", r"\1", heading)  # inline code is rendered as <code>
        plain = re.sub(r"<[^>]+>", "", html)
        assert text.replace("&", "&amp;") in plain or text in plain, heading


def test_notebooks_render_with_their_plots(site):
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
    assert notebooks
    plots = 0
    for nb in notebooks:
        html = _html_of(site, f"notebooks/{nb.name}").read_text(encoding="utf-8")
        assert "jupyter-wrapper" in html, nb.name
        plots += html.count('src="data:image/png;base64,')
    assert plots > 0, "no notebook page shows a plot"


@pytest.mark.parametrize("name", ["headline", "mnist1d", "dp"])
def test_readme_headline_numbers_are_in_results(name):
    # The README's headline numbers are copied from benchmarks/RESULTS.md: each
    # must still be there, so a rerun of the benchmarks cannot leave them stale.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(rf"<!-- {name}:begin -->(.*?)<!-- {name}:end -->", readme, re.S)
    assert block, f"README.md has no {name} block"
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    numbers = re.findall(r"\d+(?:\.\d+)?(?:%|×)?", block.group(1))
    assert len(numbers) >= 6, numbers
    if name == "mnist1d":  # the published column is not ours to measure
        numbers = [n for n in numbers if n not in ("32%", "68%", "94%")]
    stale = [n for n in numbers if n not in results]
    assert not stale, f"README headline numbers not in benchmarks/RESULTS.md: {stale}"


def test_readme_test_commands_are_what_ci_and_pytest_run():
    # The README's full command is CI's; its quick command selects by a registered marker.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^python -m pytest\s+# the whole suite", readme, re.M), "README: no full command"
    assert re.search(r"^python -m pytest\s+# the test command of README.md", ci, re.M)
    assert 'python -m pytest -m "not slow"' in readme
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'markers = \[\s*"slow:', pyproject), "the slow marker is not registered"
    assert re.search(r"whole suite.*\d+ min", readme, re.S), "README states no measured time"
