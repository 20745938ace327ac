"""The package's imports are layered and acyclic, with no function-level import of a private name.

The layers, bottom up (:data:`LAYERS`): activations and losses, then layers,
then the network and the backward pass, then the extensions (per-example,
privacy, parallel, models, data), then training (the trainer and the run
around it), then the command line.

- In a fresh interpreter, every module is imported in layer order (the
  package's ``__init__``, which imports the public API, held back): after
  each import no module of a later layer may have been loaded.
- Read with ``ast``, every import between modules of the package (at module
  level or inside a function) goes to the same layer or a lower one, the
  module-level imports form no cycle, and no function body imports a
  private name (``from .x import _name``: the shape the old privacy/train
  cycle hid in).
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(importlib.util.find_spec("functional_bp").origin).parent

# The layers, bottom up, by the package's top-level module or subpackage name.
# A module not placed here fails test_every_module_has_a_layer, naming it.
LAYERS = [
    ["activations", "losses"],
    ["layers"],
    ["network", "_validate", "mlp", "backprop", "checkpoint", "checking", "custom_vjp",
     "columns"],
    ["per_example", "parallel", "privacy", "models", "datasets", "text"],
    ["train", "experiment", "recipes", "lm", "lm_run"],
    ["cli", "bench", "__main__"],
]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["functional_bp", *parts])


def _files():
    return sorted(p for p in ROOT.rglob("*.py") if p != ROOT / "__init__.py")


def _layer(module: str):
    """The layer of ``functional_bp.<top>...``, or None (not placed; the root package)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    return None


def _in_order():
    """The placed modules in layer order (an unplaced one fails test_every_module_has_a_layer)."""
    placed = [m for m in map(_module_name, _files()) if _layer(m) is not None]
    return sorted(placed, key=lambda m: (_layer(m), m))


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in _files() if _layer(_module_name(p)) is None]
    assert not missing, (f"modules with no place in tests/test_imports.py's LAYERS: {missing}; "
                         "add each to the lowest layer at or above every module it imports")


# ------------------------------------------------------------------ imports in a fresh process

_PROBE = textwrap.dedent("""
    import importlib, json, sys, types
    root, layers, order = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
    stub = types.ModuleType("functional_bp")  # the package without its __init__'s imports
    stub.__path__ = [root]
    sys.modules["functional_bp"] = stub

    def layer(m):
        top = m.split(".")[1]
        return next((i for i, names in enumerate(layers) if top in names), 0)

    for target in order:
        if target.endswith("__main__"):
            continue
        importlib.import_module(target)
        later = sorted(m for m in sys.modules
                       if m.startswith("functional_bp.") and layer(m) > layer(target))
        if later:
            sys.exit(f"importing {target} (layer {layer(target)}) loaded later layers: {later}")
    print("imported", len(order), "modules in layer order")
""")


def test_every_module_imports_in_layer_order_in_a_fresh_process():
    import json

    run = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT), json.dumps(LAYERS),
                          *_in_order()], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "in layer order" in run.stdout


# ------------------------------------------------------------------ imports read from the source

def _imports(path: pathlib.Path):
    """[(line, in_function, target module, names)] for each import of a package module."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = {id(n) for fn in ast.walk(tree)
                 if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn) if n is not fn}
    out = []
    for node in ast.walk(tree):
        inside = id(node) in functions
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("functional_bp"):
                continue
            names = [a.name for a in node.names]
            # ``from . import x``: x is a module of the package when its file exists
            for name in names:
                sub = f"{target}.{name}"
                is_module = (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists() \
                    or (ROOT.parent / sub.replace(".", "/") / "__init__.py").exists()
                out.append((node.lineno, inside, sub if is_module else target, name))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("functional_bp"):
                    out.append((node.lineno, inside, a.name, a.name))
    return out


def _private_imports_in_functions(path: pathlib.Path):
    return [f"{path.relative_to(ROOT.parent)}:{line}: from {target.rsplit('.', 1)[0] if target.endswith('.' + name) else target} import {name}"
            for line, inside, target, name in _imports(path)
            if inside and name.startswith("_") and not name.startswith("__")]


def test_no_function_imports_a_private_name():
    found = [f for p in _files() for f in _private_imports_in_functions(p)]
    assert not found, "function-level imports of private names:\n" + "\n".join(found)


def test_the_private_import_check_can_fail(tmp_path, monkeypatch):
    """The old privacy.fit_epoch's import is caught (the check is not vacuous)."""
    pkg = tmp_path / "functional_bp"
    pkg.mkdir()
    (pkg / "train.py").write_text("def _apply(): pass\n")
    (pkg / "privacy.py").write_text(
        "def fit_epoch():\n    from .train import _apply, _metrics\n    return _apply\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    found = _private_imports_in_functions(pkg / "privacy.py")
    assert [f.split(": ", 1)[1] for f in found] == ["from functional_bp.train import _apply",
                                                    "from functional_bp.train import _metrics"]


def test_every_import_goes_to_the_same_layer_or_below():
    wrong = []
    for path in _files():
        me = _module_name(path)
        if _layer(me) is None:  # reported by test_every_module_has_a_layer
            continue
        for line, inside, target, _ in _imports(path):
            if target == "functional_bp":  # the root package: __version__ only
                continue
            if (_layer(target) or 0) > _layer(me):
                wrong.append(f"{me}:{line} (layer {_layer(me)}) imports {target} "
                             f"(layer {_layer(target)}){' in a function' if inside else ''}")
    assert not wrong, "imports of a later layer:\n" + "\n".join(sorted(set(wrong)))


def test_module_level_imports_have_no_cycle():
    graph = {}
    for path in _files():
        me = _module_name(path)
        graph[me] = {t for _, inside, t, _ in _imports(path)
                     if not inside and t != me and t != "functional_bp"}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a subpackage's __init__ re-exporting its own modules is not a cycle (they never
    # import their __init__ back by name): only edges between modules are in the graph
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("name", [
    "DPConfig", "DPPlan", "PoissonBatch", "calibrate_noise_multiplier", "checkpoint_metadata",
    "default_delta", "dp_event", "epoch_record", "epsilon", "fit_plan", "gaussian_noise",
    "num_chunks", "plan_from_metadata", "poisson_batch", "poisson_capacity", "poisson_mask",
    "private_batch_grad", "private_grad", "step_key", "steps_per_epoch", "SAMPLINGS",
    "ACCOUNTANTS", "OVERFLOW_PROBABILITY"])
def test_privacy_keeps_its_public_names(name):
    from functional_bp import privacy

    assert hasattr(privacy, name)
