"""Data sets: built-in and synthetic sets, the stratified split, user files and their errors."""

import sys

import numpy as np
import pytest

from functional_bp.datasets import (BUILTIN, load_dataset, load_file, standardize,
                                    stratified_split)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_shapes_dtypes_and_determinism(name):
    a, b = load_dataset(name, seed=3), load_dataset(name, seed=3)
    assert a.x_train.dtype == np.float32 and a.x_test.dtype == np.float32
    assert a.x_train.shape[1] == a.x_test.shape[1] == a.n_features
    assert len(a.x_train) == len(a.y_train) and len(a.x_test) == len(a.y_test)
    total = len(a.x_train) + len(a.x_test)
    assert abs(len(a.x_test) - 0.2 * total) <= a.n_outputs
    if a.n_classes is None:
        assert a.y_train.ndim == 2 and a.y_train.dtype == np.float32
    else:
        assert a.y_train.dtype == np.int32
        assert set(np.unique(a.y_train)) == set(range(a.n_classes))
    for u, v in zip(a[1:5], b[1:5]):
        np.testing.assert_array_equal(u, v)


def test_digits_is_scaled_and_stratified():
    d = load_dataset("digits", seed=0)
    assert len(d.x_train) + len(d.x_test) == 1797 and d.n_features == 64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    all_y = np.concatenate([d.y_train, d.y_test])
    for c in range(10):
        assert np.sum(d.y_test == c) == round(0.2 * np.sum(all_y == c))
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(d.y_test, other.y_test)  # the seed fixes the split


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"functional_bp\[train\]"):
        load_dataset("digits")


def test_stratified_split_partitions_every_class():
    labels = np.repeat(np.arange(4), [10, 7, 3, 2])
    tr, te = stratified_split(labels, 0.3, seed=5)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(len(labels)))
    for c, count in enumerate([10, 7, 3, 2]):
        k = np.sum(labels[te] == c)
        assert 1 <= k <= count - 1 and abs(k - 0.3 * count) <= 1


def test_npz_and_csv_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    labels = np.arange(30) % 3
    np.savez(tmp_path / "c.npz", X=x, y=labels)
    d = load_file(tmp_path / "c.npz", seed=0)
    assert d.n_classes == 3 and d.x_train.shape[1] == 3 and len(d.x_train) + len(d.x_test) == 30

    np.savez(tmp_path / "r.npz", X=x, y=x @ np.ones((3, 2)))
    r = load_file(tmp_path / "r.npz")
    assert r.n_classes is None and r.y_train.shape[1] == 2

    rows = ["a,b,c,label"] + [",".join(map(str, [*row, int(c)])) for row, c in zip(x, labels)]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    c = load_dataset(str(tmp_path / "c.csv"))
    assert c.n_classes == 3 and c.n_features == 3
    got = np.sort(np.concatenate([c.x_train, c.x_test]), axis=0)
    np.testing.assert_allclose(got, np.sort(x, axis=0), rtol=1e-6)
    assert np.bincount(np.concatenate([c.y_train, c.y_test])).tolist() == [10, 10, 10]
    reg = load_file(tmp_path / "c.csv", task="regression")
    assert reg.n_classes is None and reg.y_train.shape[1] == 1


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda p: p / "missing.csv", FileNotFoundError, "not found"),
        (lambda p: _write(p, "d.txt", "1,2\n"), ValueError, r"\.npz or \.csv"),
        (lambda p: _write(p, "d.csv", "1,2,3\n4,x,6\n"), ValueError, r"non-numeric .*'x'.*row 1, column 1"),
        (lambda p: _write(p, "d.csv", "1,2,3\n4,nan,6\n"), ValueError, "NaN"),
        (lambda p: _write(p, "d.csv", "1,2,3\n4,5\n"), ValueError, "row 1 has 2 columns"),
        (lambda p: _write(p, "d.csv", "1\n2\n"), ValueError, "at least 2 columns"),
        (lambda p: _write(p, "d.csv", "a,b\n"), ValueError, "no data rows"),
        (lambda p: _write(p, "d.npz", "not a zip"), ValueError, "cannot read"),
    ],
)
def test_file_errors(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        load_file(make(tmp_path))


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(X=np.zeros((4, 2))), r"needs arrays 'X' .* found \['X'\]"),
        (dict(X=np.zeros(4), y=np.zeros(4)), "X must be 2-D"),
        (dict(X=np.zeros((4, 2)), y=np.zeros(3)), r"y must have shape \(4,\)"),
        (dict(X=np.array([[1.0, np.nan]] * 4), y=np.arange(4)), "NaN"),
        (dict(X=np.array([["a", "b"]] * 4), y=np.arange(4)), "numeric"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_file(tmp_path / "d.npz")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="digits"):
        load_dataset("mnist")


def test_standardize_uses_training_statistics():
    d = load_dataset("digits", seed=0)
    s, mean, std = standardize(d)
    varying = d.x_train.std(axis=0) > 0
    np.testing.assert_allclose(s.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(axis=0)[varying], 1, rtol=1e-4)
    np.testing.assert_allclose(s.x_test, (d.x_test - mean) / std, rtol=1e-6)
    assert np.all(std[~varying] == 1)
