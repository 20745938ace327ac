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

``digits`` is scikit-learn's bundled copy of the UCI handwritten digits (no
download); scikit-learn is the optional extra ``functional_bp[train]`` and is
imported only when ``digits`` is asked for. The synthetic sets need only numpy.

User data: an ``.npz`` file with arrays ``X`` (m, n_0) and ``y`` (m,) or
(m, n_L), or a ``.csv`` file whose last column is the target (a header row is
skipped). Integer targets (or, in a CSV, a last column of whole numbers) mean
classification; pass ``task=`` to choose explicitly.

Example::

    >>> from functional_bp.datasets import load_dataset
    >>> data = load_dataset("moons", seed=0)
    >>> data.x_train.shape, data.x_test.shape, data.n_classes
    ((320, 2), (80, 2), 2)
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from typing import NamedTuple

import numpy as np

BUILTIN = ("digits", "xor", "moons", "spirals", "sine")
TASKS = ("auto", "classification", "regression")


class Dataset(NamedTuple):
    """Train and test arrays, and what kind of problem they pose.

    Attributes:
      name: the built-in name or the file path.
      x_train: (m_train, n_0) float32.
      y_train: (m_train,) int32 labels (classification) or (m_train, n_L)
        float32 targets (regression).
      x_test, y_test: the same for the held-out part.
      n_classes: K for classification, None for regression.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None

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
def _check_fraction(test_fraction):
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")


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
    return Dataset(name, x[tr], y[tr], x[te], y[te], n_classes)


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


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read as .npz: {e}") from None
    if not {"X", "y"} <= set(arrays):
        raise ValueError(
            f"{path}: an .npz data file needs arrays 'X' (m, n_0) and 'y' "
            f"(m,) or (m, n_L); found {sorted(arrays)}"
        )
    x, y = arrays["X"], arrays["y"]
    for name, a in (("X", x), ("y", y)):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ValueError(f"{path}: {name} must be numeric; got dtype {a.dtype}")
    return x, y, np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_


def _parse_float(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
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
    return values[:, :-1], y, whole


def load_file(path, *, task="auto", test_fraction=0.2, seed=0) -> Dataset:
    """Load ``.npz`` (arrays X, y) or ``.csv`` (last column the target) and split it.

    Raises:
      FileNotFoundError: no such file.
      ValueError: unknown extension, missing arrays, wrong shapes, non-numeric
        values, NaN or infinities (the message names the file and the place).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {list(TASKS)}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        x, y, looks_like_labels = _read_npz(path)
    elif ext == ".csv":
        x, y, looks_like_labels = _read_csv(path)
    else:
        raise ValueError(f"{path}: data files must end in .npz or .csv; got {ext!r}")

    if x.ndim != 2:
        raise ValueError(f"{path}: X must be 2-D (m examples, n_0 features); got shape {x.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{path}: y must have shape ({x.shape[0]},) or ({x.shape[0]}, n_L) to "
            f"match X {x.shape}; got {y.shape}"
        )
    _check_finite(path, "X", x.astype(np.float64))
    _check_finite(path, "y", y.astype(np.float64))

    if task == "auto":
        task = "classification" if (y.ndim == 1 and looks_like_labels) else "regression"
    if task == "classification":
        if y.ndim != 1 or not np.all(y == np.round(y)):
            raise ValueError(
                f"{path}: classification needs one whole-number class label per row; "
                f"got y of shape {y.shape}"
            )
        classes, labels = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{path}: classification needs at least 2 classes; got {len(classes)}")
        y, n_classes = labels.astype(np.int32), len(classes)
    else:
        y, n_classes = y.reshape(y.shape[0], -1).astype(np.float32), None
    return split(path, x.astype(np.float32), y, n_classes, test_fraction=test_fraction,
                 seed=seed)


def load_dataset(name, *, seed=0, test_fraction=0.2, task="auto") -> Dataset:
    """A built-in set by name (see :data:`BUILTIN`) or a user file by path.

    Args:
      name: ``"digits"``, ``"xor"``, ``"moons"``, ``"spirals"``, ``"sine"``,
        or a path ending in ``.npz`` or ``.csv``.
      seed: fixes the synthetic draws and the train/test split.
      test_fraction: the share of each class (or of all rows, for regression)
        held out for testing.
      task: for files: ``"auto"``, ``"classification"`` or ``"regression"``.

    Returns:
      A :class:`Dataset`.
    """
    name = os.fspath(name)
    if name in BUILTIN:
        x, y, n_classes = _builtin(name, seed)
        return split(name, x, y, n_classes, test_fraction=test_fraction, seed=seed)
    if name.lower().endswith((".npz", ".csv")) or os.sep in name:
        return load_file(name, task=task, test_fraction=test_fraction, seed=seed)
    raise ValueError(
        f"unknown data set {name!r}; valid names are {list(BUILTIN)}, or a path to "
        "an .npz (arrays X, y) or .csv (last column the target) file"
    )


def standardize(data: Dataset):
    """Shift and scale every feature to mean 0, std 1 on the training part.

    x := (x - mean) / std with mean and std of ``x_train`` per column (a
    constant column keeps std 1). The test part uses the training statistics.

    Returns:
      ``(dataset, mean, std)``; mean and std have shape (n_0,).
    """
    mean = data.x_train.mean(axis=0)
    std = data.x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return data._replace(x_train=scale(data.x_train), x_test=scale(data.x_test)), mean, std
