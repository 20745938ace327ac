"""Test configuration: strict JAX and the hypothesis profiles.

Profiles (choose with HYPOTHESIS_PROFILE=...):
  ci        the default; derandomized, 40 examples per property (README.md's Tests
            section gives the suite's measured time on 2 CPU cores).
  thorough  thousands of examples per property, for long runs before a release.

Markers: ``slow`` (every property test and the notebook runs; see :data:`SLOW`), left
out by the quick loop ``python -m pytest -m "not slow"``. Each test file prints a line
when it starts, with the time into the run.
"""

import os
import time

import jax
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.internal.detection import is_hypothesis_test

# TF32 / bf16 matmuls on accelerators would break float32 comparisons.
jax.config.update("jax_default_matmul_precision", "highest")
# Hand-written backward code must broadcast explicitly (b[None, :]).
jax.config.update("jax_numpy_rank_promotion", "raise")

_common = dict(
    deadline=None,  # every new shape compiles anew under jit
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, **_common)
settings.register_profile("thorough", max_examples=2000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --- progress: each test file announces itself, with the time since the start ---------
_progress = {"start": None, "file": None}


def pytest_sessionstart(session):
    _progress["start"] = time.perf_counter()


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter writes the file's name
def pytest_runtest_logstart(nodeid, location):
    """Print the test file and the elapsed time when a file starts (even with -q)."""
    path = location[0]
    if path == _progress["file"]:
        return
    _progress["file"] = path
    reporter = _reporter()
    if reporter is not None:
        elapsed = time.perf_counter() - (_progress["start"] or time.perf_counter())
        reporter.ensure_newline()  # after a file's line of results (default verbosity)
        if reporter.verbosity < 0 and _progress.get("started"):  # -q: the dots' line
            reporter.write("\n")
        _progress["started"] = True
        reporter.write_line(f"-- {path}: starting, {elapsed // 60:.0f} min {elapsed % 60:02.0f} s "
                            "into the run")


def _reporter():
    config = _progress.get("config")
    return None if config is None else config.pluginmanager.get_plugin("terminalreporter")


def pytest_configure(config):
    _progress["config"] = config


# --- the slow tests: deselected by the quick loop, python -m pytest -m "not slow" -------
SLOW = ("tests/test_notebooks.py::test_notebook_runs", "tests/test_multihost.py")
"""Node-id prefixes (a file, or file::test) marked ``slow`` besides the property tests:
executing every notebook afresh, and the two-process run."""


def _is_slow(item):
    """Every hypothesis property test (each draws and compiles dozens of cases), and SLOW."""
    if is_hypothesis_test(getattr(item, "obj", None)):
        return True
    return any(item.nodeid == p or item.nodeid.startswith((p + "::", p + "["))
               for p in SLOW)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)


# --- memory: each file's compiled programs are dropped when the file ends --------------
@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """Free each test file's compiled programs and traces after it (``jax.clear_caches``).

    Property tests compile a new program for almost every drawn shape; kept for
    the whole run, the programs of every file add up to gigabytes in one
    process (the run of the whole suite ended in an abort inside XLA's compiler
    near its end). No file reuses another's programs, so nothing is lost.
    """
    yield
    import gc

    jax.clear_caches()
    gc.collect()
