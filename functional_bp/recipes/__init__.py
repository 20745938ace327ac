"""Recipes: the settings of a published number, shipped as TOML files, one per recipe.

Each ``<name>.toml`` in this folder is one recipe; adding a recipe is adding
a file (no list to edit). A recipe holds:

- ``reproduces``: which published number it gives and where it is
  published (printed by ``functional-bp train --recipe list``);
- ``seeds``: the seeds behind the published number (a mean over them);
- ``[train]``: the run's settings, keys of
  :data:`functional_bp.experiment.TRAIN_DEFAULTS` (the command line's
  options, ``batch_size`` for ``--batch-size``, ``standardize = false`` for
  ``--no-standardize``) and the run's length (:data:`RUN_LENGTH`);
- optionally ``[suggest]``: settings which, given without a recipe, make the
  command line name this recipe (``--data mnist1d --model cnn`` names
  ``mnist1d-cnn``);
- optionally ``needs_data``: for a recipe whose data cannot ship with it (a
  text file), what ``--data`` must be and where to get it; the command line
  refuses the recipe without ``--data``, with that text.

``functional-bp train --recipe NAME`` starts from the recipe; every option
given overrides it. In Python, :func:`load` reads one and
:func:`functional_bp.experiment.run_config` takes it as ``recipe=``.

Example::

    >>> from functional_bp import recipes
    >>> r = recipes.load("mnist1d-cnn")
    >>> r.settings["model"], r.epochs, r.seeds
    ('cnn', 150, (0, 1, 2))
    >>> " ".join(r.argv())
    'train --data mnist1d --model cnn --lr 0.01 --batch-size 100 --l2 0.001 --no-standardize --epochs 150'
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

FOLDER = Path(__file__).resolve().parent
RUN_LENGTH = ("epochs", "steps")
"""Settings of a recipe's ``[train]`` table that set the run's length, not its configuration."""

_NEGATED = {"standardize": "--no-standardize"}  # boolean settings whose option turns them off


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One recipe file, read.

    Attributes:
      name: the file's name without ``.toml``.
      reproduces: the published number and where it is published.
      seeds: the seeds the published number is a mean over.
      settings: the run's configuration settings (``[train]`` less the length).
      length: ``{"epochs": N}`` or ``{"steps": N}`` (empty: the default).
      suggest: settings that, given without a recipe, name this recipe.
      path: the file.
      needs_data: what --data must be and where to get it, for a recipe whose
        data do not ship with it (None: the recipe names its data).
    """

    name: str
    reproduces: str
    seeds: tuple
    settings: dict
    length: dict
    suggest: dict
    path: Path
    needs_data: str | None = None

    @property
    def epochs(self):
        """The run's epochs, or None when the recipe does not set them."""
        return self.length.get("epochs")

    def argv(self, seed=None):
        """The ``functional-bp`` arguments of this recipe spelled as options (``train ...``)."""
        out = ["train"]
        for key, value in {**self.settings, **self.length}.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                if key in _NEGATED and value is False:
                    out.append(_NEGATED[key])
                elif key not in _NEGATED and value:
                    out.append(flag)
            elif isinstance(value, list):
                out += [flag, *map(str, value)]
            else:
                out += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        if seed is not None:
            out += ["--seed", str(seed)]
        return out


def names() -> list[str]:
    """The shipped recipes' names, sorted."""
    return sorted(p.stem for p in FOLDER.glob("*.toml"))


def load(name: str) -> Recipe:
    """The recipe ``name`` (a shipped one, or the path of a ``.toml`` file).

    Raises:
      KeyError: no such recipe (the message lists the names).
      ValueError: a file that is not a recipe (bad TOML, an unknown setting).
    """
    from ..experiment import TRAIN_DEFAULTS

    path = Path(name) if str(name).endswith(".toml") else FOLDER / f"{name}.toml"
    if not path.is_file():
        raise KeyError(f"no recipe {name!r}; the recipes are {', '.join(names())} (or the "
                       "path of a .toml file)")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    train = doc.get("train")
    extra = set(doc) - {"reproduces", "seeds", "train", "suggest", "needs_data"}
    if not isinstance(train, dict) or extra or not isinstance(doc.get("reproduces"), str):
        raise ValueError(f"{path}: a recipe has a 'reproduces' text, a [train] table and "
                         f"optionally 'seeds' and [suggest]; got {sorted(doc)}")
    known = (set(TRAIN_DEFAULTS) - {"recipe"}) | set(RUN_LENGTH)
    for table in (train, doc.get("suggest", {})):
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {unknown}; the settings are "
                             f"{', '.join(sorted(known))}")
    length = {k: train[k] for k in RUN_LENGTH if k in train}
    if len(length) > 1:
        raise ValueError(f"{path}: give the run's length once ({' or '.join(RUN_LENGTH)})")
    settings = {k: v for k, v in train.items() if k not in RUN_LENGTH}
    return Recipe(path.stem, doc["reproduces"], tuple(doc.get("seeds", ())), settings,
                  length, dict(doc.get("suggest", {})), path, doc.get("needs_data"))


def suggestion(config) -> Recipe | None:
    """The recipe whose ``[suggest]`` settings ``config`` has, when it differs from it."""
    for name in names():
        recipe = load(name)
        if recipe.suggest and all(config.get(k) == v for k, v in recipe.suggest.items()) \
                and any(config.get(k) != v for k, v in recipe.settings.items()):
            return recipe
    return None
