"""Data for training: built-in sets, synthetic sets, and user files.

Every loader returns a :class:`Dataset`: train and test arrays in row layout
(examples are rows), ready for :func:`functional_bp.train.fit`.

- Classification: ``y`` holds integer class labels 0..K-1, shape (m,);
  ``n_classes = K``. The split is stratified: each class keeps its share.
- Regression: ``y`` holds real targets, shape (m, n_L); ``n_classes = None``.

Built-in names (:data:`BUILTIN`):

| name | task | examples | features |
|---|---|---|---|
| digits | 10 classes | 1,797 8x8 images, pixels scaled to [0, 1] | 64 |
| xor | 2 classes | 400 points around the corners of a square | 2 |
| moons | 2 classes | 400 points on two interleaved half circles | 2 |
| spirals | 2 classes | 400 points on two interleaved spirals | 2 |
| sine | regression | 400 points of y = sin(x) + noise, x in [-pi, pi] | 1 |
| mnist1d | 10 classes | 4,000 train + 1,000 test 1-D signals (its official split) | 40 |

``digits`` is scikit-learn's bundled copy of the UCI handwritten digits (no
download); scikit-learn is the optional extra ``functional_bp[train]`` and is
imported only when ``digits`` is asked for. ``mnist1d`` is built locally, no
download, by the ``mnist1d`` package (extra ``functional_bp[mnist1d]``):
``make_dataset(get_dataset_args())``, whose first 4,000 examples are the
official training part and the last 1,000 the test part; that split is kept.
The synthetic sets need only numpy.

User data: an ``.npz`` file with arrays ``X`` (or ``x``) (m, n_0) and ``y``
(m,) or (m, n_L), optionally ``x_test`` and ``y_test`` for a given test part;
or a ``.csv`` file whose last column is the target (a header row is skipped;
a UTF-8 byte-order mark is allowed). A test part can also come from a second
file (``test=``). Without one, the data are split (stratified for classes).

What the target is (``task="auto"``): a float ``y`` in an ``.npz``, a CSV
target with fractions, or several target columns mean regression. Integer
labels (an ``.npz`` integer or bool ``y`` of shape (m,) or (m, 1), or a CSV
column of whole numbers) mean classification only when there are between 2
and :data:`MAX_GUESSED_CLASSES` distinct values and each occurs at least
twice; otherwise the guess is refused with a ValueError asking for
``task="classification"`` or ``task="regression"`` (``--task`` on the command
line), since whole numbers could be either.

Example::

    >>> from functional_bp.datasets import load_dataset
    >>> data = load_dataset("moons", seed=0)
    >>> data.x_train.shape, data.x_test.shape, data.n_classes
    ((320, 2), (80, 2), 2)
"""

from __future__ import annotations

import csv
import functools
import math
import os
import random
import zipfile
from typing import NamedTuple

import numpy as np

from .text.corpus import CharCorpus, load_text
from .text.sort import SORT_DIGITS, sort_problems

BUILTIN = ("digits", "xor", "moons", "spirals", "sine", "mnist1d")
FIXED_SPLIT = ("mnist1d",)
"""Built-in sets that come with their own (official) train/test split."""
TASKS = ("auto", "classification", "regression")
MAX_GUESSED_CLASSES = 20
"""``task="auto"`` guesses classification for at most this many distinct labels."""
DEFAULT_TEST_FRACTION = 0.2


class Dataset(NamedTuple):
    """Train and test arrays, and what kind of problem they pose.

    Attributes:
      name: the built-in name or the file path.
      x_train: (m_train, n_0) float32.
      y_train: (m_train,) int32 labels (classification) or (m_train, n_L)
        float32 targets (regression).
      x_test, y_test: the same for the held-out part.
      n_classes: K for classification, None for regression.
      x_val, y_val: a validation part carved out of the training part
        (``val_fraction=``), or None.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def task(self) -> str:
        return "regression" if self.n_classes is None else "classification"

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_outputs(self) -> int:
        """n_L: one output per class, or the width of the regression target."""
        return self.n_classes if self.n_classes is not None else self.y_train.shape[1]


# --- splits --------------------------------------------------------------
def _check_fraction(fraction, name="test_fraction"):
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{name} must be in (0, 1); got {fraction}")


def stratified_split(labels, test_fraction=0.2, *, seed=0):
    """Indices ``(train, test)`` with each class split in the same proportion.

    Each class c with m_c examples sends round(test_fraction * m_c) of them,
    drawn by ``numpy.random.default_rng(seed)``, to the test part (at least one
    when m_c >= 2, so every class is seen in both parts).

    Example::

        >>> import numpy as np
        >>> tr, te = stratified_split(np.array([0] * 10 + [1] * 5), 0.2, seed=0)
        >>> len(tr), len(te), int(np.sum(np.array([0] * 10 + [1] * 5)[te]))
        (12, 3, 1)
    """
    _check_fraction(test_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(test_fraction * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        test.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def random_split(m, test_fraction=0.2, *, seed=0):
    """Indices ``(train, test)``: a seeded random split of ``range(m)``."""
    _check_fraction(test_fraction)
    order = np.random.default_rng(seed).permutation(m)
    k = min(max(int(round(test_fraction * m)), 1), m - 1)
    return np.sort(order[k:]), np.sort(order[:k])


def split(name, x, y, n_classes, *, test_fraction=0.2, seed=0) -> Dataset:
    """Split arrays into a :class:`Dataset` (stratified for classification)."""
    if x.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 examples to split; got {x.shape[0]}")
    if n_classes is None:
        tr, te = random_split(x.shape[0], test_fraction, seed=seed)
    else:
        tr, te = stratified_split(y, test_fraction, seed=seed)
        _check_parts(name, "test", te, y)
    return Dataset(name, x[tr], y[tr], x[te], y[te], n_classes)


def _check_parts(name, part, held_out, y):
    if len(held_out) == 0:
        raise ValueError(
            f"{name}: the stratified {part} part is empty: each of the {len(np.unique(y))} "
            f"classes has a single example among {len(y)} rows, so none can be held out; "
            "are these really class labels? (else use the regression task)"
        )


def split_validation(data: Dataset, val_fraction: float, *, seed=0) -> Dataset:
    """Carve a validation part out of the training part (stratified for classes).

    The test part is untouched; ``x_val``, ``y_val`` get ``val_fraction`` of
    the training rows (of each class), drawn with ``seed``.

    Example::

        >>> d = split_validation(load_dataset("moons", seed=0), 0.25, seed=0)
        >>> d.x_train.shape, d.x_val.shape, d.x_test.shape
        ((240, 2), (80, 2), (80, 2))
    """
    _check_fraction(val_fraction, "val_fraction")
    x, y = data.x_train, data.y_train
    if x.shape[0] < 2:
        raise ValueError(f"{data.name}: need at least 2 training examples to split off a "
                         f"validation part; got {x.shape[0]}")
    seed = (seed, 1)  # a stream of its own, apart from the test split's
    if data.n_classes is None:
        tr, va = random_split(x.shape[0], val_fraction, seed=seed)
    else:
        tr, va = stratified_split(y, val_fraction, seed=seed)
        _check_parts(data.name, "validation", va, y)
    return data._replace(x_train=x[tr], y_train=y[tr], x_val=x[va], y_val=y[va])


# --- built-in sets -------------------------------------------------------
def load_digits():
    """scikit-learn's 8x8 digits: x (1797, 64) in [0, 1], labels (1797,)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError(
            "the 'digits' data set comes with scikit-learn, which is not installed; "
            "install the training extra: pip install 'functional_bp[train]'"
        ) from None
    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)  # pixel values are 0..16
    return x, bunch.target.astype(np.int32)


def make_xor(m=400, *, noise=0.3, seed=0):
    """Points around (+-1, +-1); label 1 where the signs differ (XOR)."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 2, size=(m, 2))
    x = (2 * corners - 1) + noise * rng.standard_normal((m, 2))
    return x.astype(np.float32), (corners[:, 0] ^ corners[:, 1]).astype(np.int32)


def make_moons(m=400, *, noise=0.1, seed=0):
    """Two interleaved half circles (class 0 on top, class 1 below)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(m) % 2
    t = rng.uniform(0.0, math.pi, m)
    x = np.where(
        labels[:, None] == 0,
        np.stack([np.cos(t), np.sin(t)], axis=1),
        np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=1),
    )
    x = x + noise * rng.standard_normal((m, 2))
    return x.astype(np.float32), labels.astype(np.int32)


def make_spirals(m=400, *, turns=1.5, noise=0.05, seed=0):
    """Two interleaved spirals, one per class, radius growing to 1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(m) % 2
    r = rng.uniform(0.05, 1.0, m)
    theta = 2 * math.pi * turns * r + math.pi * labels
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    x = x + noise * rng.standard_normal((m, 2))
    return x.astype(np.float32), labels.astype(np.int32)


def make_sine(m=400, *, noise=0.05, seed=0):
    """Regression: y = sin(x) + noise for x uniform in [-pi, pi]; y is (m, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-math.pi, math.pi, (m, 1))
    y = np.sin(x) + noise * rng.standard_normal((m, 1))
    return x.astype(np.float32), y.astype(np.float32)


@functools.lru_cache(maxsize=1)
def load_mnist1d():
    """MNIST-1D built locally: ``(x, y, x_test, y_test)``, the official 4,000/1,000 split.

    Calls the ``mnist1d`` package's ``make_dataset(get_dataset_args())`` (its
    default arguments, seed 42; no download) and keeps its split: the first
    4,000 examples train, the last 1,000 test. x is (m, 40) float32, y int32
    labels 0..9. ``make_dataset`` seeds numpy's and Python's global random
    generators; their states are restored afterwards. The arrays are cached
    and read-only.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError(
            "the 'mnist1d' data set is built by the mnist1d package, which is not "
            "installed; install the extra: pip install 'functional_bp[mnist1d]'"
        ) from None
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = (d["x"].astype(np.float32), d["y"].astype(np.int32),
              d["x_test"].astype(np.float32), d["y_test"].astype(np.int32))
    for a in arrays:
        a.flags.writeable = False
    return arrays


def _builtin(name, seed):
    if name == "digits":
        return (*load_digits(), 10)
    makers = {"xor": make_xor, "moons": make_moons, "spirals": make_spirals}
    if name in makers:
        return (*makers[name](seed=seed), 2)
    return (*make_sine(seed=seed), None)


# --- user files ------------------------------------------------------------
def _check_finite(path, name, a):
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(a.shape[0], -1).any(axis=1))
        raise ValueError(
            f"{path}: {name} contains NaN or infinite values in {len(rows)} row(s), "
            f"first at row {int(rows[0])}; remove or impute them first"
        )


def _check_float32_range(path, name, a):
    big = np.abs(a.astype(np.float64)) > np.finfo(np.float32).max
    if big.any():
        rows = np.flatnonzero(big.reshape(a.shape[0], -1).any(axis=1))
        raise ValueError(
            f"{path}: {name} holds values beyond float32's range (|v| > 3.4e38) in "
            f"{len(rows)} row(s), first at row {int(rows[0])}; they would become infinite: "
            "rescale those features first"
        )


def _one_of(path, arrays, names):
    found = [n for n in names if n in arrays]
    if len(found) > 1:
        raise ValueError(f"{path}: holds both {found[0]!r} and {found[1]!r}; keep one")
    return found[0] if found else None


def _read_npz(path):
    """{"x", "y"[, "x_test", "y_test"]} from an .npz, and whether y is integer-typed."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if not zipfile.is_zipfile(path):
        what = ("a single .npy array (numpy.save), not an .npz archive"
                if magic == b"\x93NUMPY" else
                f"not an .npz archive (a zip file written by numpy.savez); it starts "
                f"with {magic!r}")
        raise ValueError(f"{path}: {what}; write the data with "
                         "numpy.savez(path, X=features, y=targets)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read as .npz (truncated or corrupted?): {e}") from None
    names = {"x": _one_of(path, arrays, ("X", "x")), "y": _one_of(path, arrays, ("y", "Y")),
             "x_test": _one_of(path, arrays, ("X_test", "x_test")),
             "y_test": _one_of(path, arrays, ("y_test", "Y_test"))}
    if names["x"] is None or names["y"] is None:
        raise ValueError(
            f"{path}: an .npz data file needs arrays 'X' (or 'x') (m, n_0) and 'y' "
            f"(m,) or (m, n_L), optionally 'x_test' and 'y_test'; found {sorted(arrays)}"
        )
    if (names["x_test"] is None) != (names["y_test"] is None):
        raise ValueError(f"{path}: a given test part needs both 'x_test' and 'y_test'; "
                         f"found {sorted(arrays)}")
    out = {k: arrays[n] for k, n in names.items() if n is not None}
    for k, a in out.items():
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ValueError(f"{path}: {names[k]} must be numeric; got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"{path}: {names[k]} is complex ({a.dtype}); the imaginary part "
                             "would be dropped: store real features (e.g. the real and "
                             "imaginary parts as two columns)")
    labels = all(np.issubdtype(out[k].dtype, np.integer) or out[k].dtype == np.bool_
                 for k in ("y", "y_test") if k in out)
    return out, labels


def _parse_float(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv(path):
    """{"x", "y"} from a CSV (last column the target), and whether y is whole numbers."""
    with open(path, "rb") as f:
        start = f.read(4)
    if start[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{path}: the file is UTF-16 text (it starts with a UTF-16 "
                         "byte-order mark); save it as UTF-8 (or plain ASCII) CSV")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: drops a BOM
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save "
                         "it as UTF-8 (or plain ASCII) CSV") from None
    if rows and all(_parse_float(c) is None for c in rows[0]):
        rows = rows[1:]  # a header
    if not rows:
        raise ValueError(f"{path}: no data rows")
    width = len(rows[0])
    if width < 2:
        raise ValueError(
            f"{path}: need at least 2 columns (features, then the target); got {width}"
        )
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(
                f"{path}: data row {i} has {len(row)} columns, expected {width}"
            )
        for j, cell in enumerate(row):
            v = _parse_float(cell)
            if v is None:
                raise ValueError(
                    f"{path}: non-numeric value {cell!r} in data row {i}, column {j}"
                )
            values[i, j] = v
    y = values[:, -1]
    whole = bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))
    return {"x": values[:, :-1], "y": y}, whole


def _read(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}" + (
            f" (from the folder {os.getcwd()})" if not os.path.isabs(path) else ""))
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        arrays, labels = _read_npz(path)
    elif ext == ".csv":
        arrays, labels = _read_csv(path)
    else:
        raise ValueError(f"{path}: data files must end in .npz or .csv; got {ext!r}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 2:
        raise ValueError(f"{path}: X must be 2-D (m examples, n_0 features); got shape {x.shape}")
    for name in ("x", "x_test"):
        if name in arrays and 0 in arrays[name].shape:
            what = "no examples (0 rows)" if arrays[name].shape[0] == 0 else "no features (0 columns)"
            raise ValueError(f"{path}: {name.replace('x', 'X', 1)} has shape "
                             f"{arrays[name].shape}: {what}; the file needs at least one "
                             "example with at least one feature")
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{path}: y must have shape ({x.shape[0]},) or ({x.shape[0]}, n_L) to "
            f"match X {x.shape}; got {y.shape}"
        )
    for name in ("x", "y", "x_test", "y_test"):
        if name in arrays:
            _check_finite(path, name.replace("x", "X", 1) if name[0] == "x" else name,
                          arrays[name].astype(np.float64))
            if name[0] == "x":  # features are trained in float32: beyond its range is inf
                _check_float32_range(path, name.replace("x", "X", 1), arrays[name])
    if "x_test" in arrays:
        xt, yt = arrays["x_test"], arrays["y_test"]
        if xt.ndim != 2 or xt.shape[1] != x.shape[1] or yt.shape[0] != xt.shape[0] \
                or yt.shape[1:] != y.shape[1:]:
            raise ValueError(
                f"{path}: x_test {xt.shape} and y_test {yt.shape} must match X {x.shape} "
                f"and y {y.shape} in every dimension but the first"
            )
    return arrays, labels


def _guess_task(path, y, labels):
    """``task="auto"``: classification or regression, or a ValueError when unclear."""
    if not labels or (y.ndim == 2 and y.shape[1] != 1):
        return "regression"
    values, counts = np.unique(y.reshape(-1), return_counts=True)
    if 2 <= len(values) <= MAX_GUESSED_CLASSES and counts.min() >= 2:
        return "classification"
    if len(values) < 2:
        why = f"y has a single value, {values[0]:g}"
    elif len(values) == len(y):
        why = f"y holds {len(y)} distinct whole numbers in {len(y)} rows (all different)"
    elif counts.min() < 2:
        why = (f"y holds {len(values)} distinct whole numbers in {len(y)} rows, "
               f"{int(np.sum(counts == 1))} of them only once")
    else:
        why = (f"y holds {len(values)} distinct whole numbers in {len(y)} rows (more "
               f"than {MAX_GUESSED_CLASSES}, the most guessed to be classes)")
    raise ValueError(
        f"{path}: cannot tell whether the target is class labels or a regression "
        f"target: {why}; say which with --task classification or --task regression "
        "(task= in Python)"
    )


def _encode(path, task, ys):
    """Targets of each part for ``task``: labels 0..K-1 over the parts' union, or floats."""
    if task == "regression":
        for y in ys:
            _check_float32_range(path, "y", y.reshape(y.shape[0], -1))
        return [y.reshape(y.shape[0], -1).astype(np.float32) for y in ys], None
    for y in ys:
        if (y.ndim == 2 and y.shape[1] != 1) or not np.all(y == np.round(y)):
            raise ValueError(
                f"{path}: classification needs one whole-number class label per row; "
                f"got y of shape {y.shape}" + ("" if y.ndim == 2 and y.shape[1] != 1
                                               else " with fractional values")
            )
    flat = [y.reshape(-1) for y in ys]
    classes = np.unique(np.concatenate(flat))
    if len(classes) < 2:
        raise ValueError(f"{path}: classification needs at least 2 classes; got {len(classes)}")
    return [np.searchsorted(classes, y).astype(np.int32) for y in flat], len(classes)


def load_file(path, *, task="auto", test_fraction=None, seed=0, test=None) -> Dataset:
    """Load ``.npz`` (arrays X, y) or ``.csv`` (last column the target), with a test part.

    The test part is, in order: ``x_test``/``y_test`` stored in the ``.npz``,
    the file ``test`` (same format as ``path``), or a split of ``path``
    (``test_fraction``, default 0.2, drawn with ``seed``; stratified for
    classes). Labels are numbered 0..K-1 over train and test together.

    Raises:
      FileNotFoundError: no such file.
      ValueError: unknown extension, missing arrays, wrong shapes, non-numeric
        values, NaN or infinities, an unclear task (the message names the file
        and the place).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {list(TASKS)}")
    path = os.fspath(path)
    arrays, labels = _read(path)
    given = "x_test" in arrays
    if test is not None:
        if given:
            raise ValueError(f"{path}: holds x_test and y_test already; give no test file")
        test = os.fspath(test)
        test_arrays, test_labels = _read(test)
        if "x_test" in test_arrays:
            raise ValueError(f"{test}: a test file holds X and y only; found x_test too")
        if test_arrays["x"].shape[1:] != arrays["x"].shape[1:] or \
                test_arrays["y"].shape[1:] != arrays["y"].shape[1:]:
            raise ValueError(
                f"{test}: the test file's X {test_arrays['x'].shape} and y "
                f"{test_arrays['y'].shape} must match {path}'s X {arrays['x'].shape} and "
                f"y {arrays['y'].shape} but for the number of rows"
            )
        arrays.update(x_test=test_arrays["x"], y_test=test_arrays["y"])
        labels, given = labels and test_labels, True
    if given and test_fraction is not None:
        raise ValueError(f"{path}: test_fraction={test_fraction} does not apply: the test "
                         "part is given")
    ys = [arrays["y"]] + ([arrays["y_test"]] if given else [])
    if task == "auto":
        task = _guess_task(path, np.concatenate([y.reshape(len(y), -1) for y in ys]), labels)
    ys, n_classes = _encode(path, task, ys)
    x = arrays["x"].astype(np.float32)
    if given:
        return Dataset(path, x, ys[0], arrays["x_test"].astype(np.float32), ys[1], n_classes)
    return split(path, x, ys[0], n_classes, seed=seed,
                 test_fraction=DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction)


SEQUENCE_DATA = ("sort", "text:PATH")
"""Token data: minGPT's sort task and a character-level text (see :mod:`functional_bp.text`)."""


def is_token_data(name) -> bool:
    """Whether ``name`` loads token data (:data:`SEQUENCE_DATA`): ``"sort"`` or ``"text:PATH"``.

    Token data are never standardized and take a model of tokens (a GPT).

    Example::

        >>> is_token_data("sort"), is_token_data("text:input.txt"), is_token_data("digits")
        (True, True, False)
    """
    name = os.fspath(name)
    return name == "sort" or name.startswith("text:")


def data_name(name) -> str:
    """The name of a data set that loads the same from any folder (what a run records).

    Built-in names (``"digits"``, ``"sort"``) are kept; a file path becomes
    absolute, and so does the path of ``"text:PATH"`` (the prefix kept).

    Example::

        >>> import os
        >>> data_name("sort"), data_name("digits")
        ('sort', 'digits')
        >>> data_name("text:input.txt") == "text:" + os.path.abspath("input.txt")
        True
    """
    name = os.fspath(name)
    if name in BUILTIN or name == "sort":
        return name
    if name.startswith("text:"):
        path = name[len("text:"):]
        return "text:" + os.path.abspath(path) if path else name
    return os.path.abspath(name)


def _sequence_data(name, seed, test_fraction, task, test, val_fraction):
    """``load_dataset`` for ``"sort"`` (a Dataset of tokens) and ``"text:PATH"`` (a CharCorpus)."""
    given = {k: v for k, v in (("test_fraction", test_fraction), ("test", test)) if v is not None}
    if task != "auto":
        given["task"] = task
    if name == "sort" and val_fraction:
        given["val_fraction"] = val_fraction
    if given:
        k, v = next(iter(given.items()))
        what = ("minGPT's sort task comes with its fixed train/test split" if name == "sort"
                else "a text corpus has a training and a validation split (val_fraction=)")
        raise ValueError(f"{k}={v!r} does not apply to {name!r}: {what}")
    if name == "sort":
        return Dataset("sort", *sort_problems(), SORT_DIGITS)
    path = name[len("text:"):]
    if not path:
        raise ValueError("text: give the path of a UTF-8 text file after it, e.g. text:input.txt")
    return load_text(path, val_fraction=val_fraction)


def load_dataset(name, *, seed=0, test_fraction=None, task="auto", test=None,
                 val_fraction=None) -> Dataset | CharCorpus:
    """A built-in set by name (see :data:`BUILTIN`) or a user file by path.

    Token data (:data:`SEQUENCE_DATA`): ``"sort"`` is minGPT's sorting task
    (:func:`functional_bp.text.sort_problems`), a :class:`Dataset` of int32
    tokens x (m, 11) and int32 targets y (m, 11) (-1 not scored), n_classes 3,
    with its fixed split; ``"text:PATH"`` reads a UTF-8 text file into a
    :class:`functional_bp.text.CharCorpus` (nanoGPT's character-level rules;
    ``val_fraction`` is the share of its characters at the end that
    validates, 0.1 by default).

    Args:
      name: ``"digits"``, ``"xor"``, ``"moons"``, ``"spirals"``, ``"sine"``,
        ``"mnist1d"``, ``"sort"``, ``"text:PATH"``, or a path ending in
        ``.npz`` or ``.csv``.
      seed: fixes the synthetic draws and the train/test (and validation) split.
      test_fraction: the share of each class (or of all rows, for regression)
        held out for testing [0.2]; an error for data that come with their test
        part (``mnist1d``, ``x_test`` in an ``.npz``, or ``test``).
      task: for files: ``"auto"``, ``"classification"`` or ``"regression"``.
      test: optional path of a file holding the test part (same format as ``name``).
      val_fraction: optional share of the training part held out for
        validation (``x_val``, ``y_val``; see :func:`split_validation`).

    Returns:
      A :class:`Dataset` (a :class:`~functional_bp.text.CharCorpus` for ``text:PATH``).
    """
    name = os.fspath(name)
    if name == "sort" or name.startswith("text:"):
        return _sequence_data(name, seed, test_fraction, task, test, val_fraction)
    if name in BUILTIN:
        if test is not None:
            raise ValueError(f"test={test!r}: a test file goes with a data file, not the "
                             f"built-in set {name!r}")
        if name in FIXED_SPLIT:
            if test_fraction is not None:
                raise ValueError(f"test_fraction={test_fraction} does not apply: {name!r} "
                                 "comes with its official test split")
            data = Dataset(name, *(np.array(a) for a in load_mnist1d()), 10)
        else:
            x, y, n_classes = _builtin(name, seed)
            data = split(name, x, y, n_classes, seed=seed, test_fraction=(
                DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction))
    elif name.lower().endswith((".npz", ".csv")) or os.sep in name:
        data = load_file(name, task=task, test_fraction=test_fraction, seed=seed, test=test)
    else:
        raise ValueError(
            f"unknown data set {name!r}; valid names are {list(BUILTIN) + ['sort']}, "
            "text:PATH for a UTF-8 text file, or a path to an .npz (arrays X, y) or .csv "
            "(last column the target) file"
        )
    return data if not val_fraction else split_validation(data, val_fraction, seed=seed)


def standardize(data: Dataset):
    """Shift and scale every feature to mean 0, std 1 on the training part.

    x := (x - mean) / std with mean and std of ``x_train`` per column (a
    constant column keeps std 1). The test (and validation) part uses the
    training statistics.

    The statistics are computed in float64 (a feature of scale 1e30 has a
    variance of 1e60, beyond float32), relative to each column's largest
    magnitude, so the statistics of any finite data are finite (|mean| and std
    never exceed the largest |x| of the column). Data that cannot be
    standardized, with NaN or infinite values, are refused with the column named.

    Returns:
      ``(dataset, mean, std)``; mean and std have shape (n_0,).

    Raises:
      ValueError: ``x_train`` has no rows, or NaN or infinite values.
    """
    x = np.asarray(data.x_train, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"standardize: x_train has shape {x.shape}; need at least one example")
    bad = ~np.isfinite(x).reshape(x.shape[0], -1).all(axis=0)
    if bad.any():
        raise ValueError(
            f"standardize: x_train holds NaN or infinite values in {int(bad.sum())} "
            f"feature(s), first feature {int(np.flatnonzero(bad)[0])}; remove or impute them "
            "first"
        )
    # Scaled by each column's largest magnitude: the squares cannot overflow.
    peak = np.max(np.abs(x), axis=0)
    peak = np.where(peak > 0, peak, 1.0)
    mean = (x / peak).mean(axis=0) * peak
    std = (x / peak).std(axis=0) * peak
    std = np.where(std > 0, std, 1.0)  # |mean|, std <= peak: finite
    dtype = np.result_type(data.x_train.dtype, np.float32)  # the statistics in x's precision
    mean, std = mean.astype(dtype), std.astype(dtype)
    tiny = std == 0  # a spread below the dtype's smallest number (subnormal data)
    if tiny.any():
        raise ValueError(
            f"standardize: feature {int(np.flatnonzero(tiny)[0])} varies by less than the "
            f"smallest {dtype} number; rescale it (or drop it) first")
    def scale(x, part):
        with np.errstate(over="ignore"):  # an overflow is caught below, and redone or refused
            out = (x - mean) / std
            if not np.all(np.isfinite(out)):  # x - mean beyond x's dtype (features near 3e38)
                out = (np.asarray(x, np.float64) - mean.astype(np.float64)) / std.astype(np.float64)
            out = out.astype(np.float32)
        if not np.all(np.isfinite(out)):
            bad = int(np.flatnonzero(~np.isfinite(out).reshape(len(out), -1).all(axis=0))[0])
            raise ValueError(
                f"standardize: {part}'s feature {bad} lies so far from the training part's "
                "values that standardized it is beyond float32's range; check that part "
                "(another scale or unit?)")
        return out

    val = {} if data.x_val is None else {"x_val": scale(data.x_val, "x_val")}
    return data._replace(x_train=scale(data.x_train, "x_train"),
                         x_test=scale(data.x_test, "x_test"), **val), \
        mean, std
